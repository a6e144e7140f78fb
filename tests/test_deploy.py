"""deploy/: docker is not run here, so each file is checked against the code it starts — the
compose file parses, runs every pool, and every command it runs exists in the CLI and the
Procfile; the worker health check works; the dashboard only asks for metrics /metrics exposes."""

from __future__ import annotations

import asyncio
import json
import os
import re
import shlex
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from redis.asyncio import Redis

from jobs import keys
from storage.embedded import EmbeddedRedis
from tests.fixtures.accounts import Account
from tests.helpers import CHAT

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
INFRA = {"postgres", "redis", "prometheus", "grafana"}


def compose() -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())
    return doc


def procfile() -> dict[str, list[str]]:
    out = {}
    for line in (ROOT / "Procfile").read_text().splitlines():
        if line.strip():
            name, cmd = line.split(":", 1)
            cmd = cmd.replace("${PORT:-8000}", "8000").replace("${SYNCNODE_SHUTDOWN_GRACE_SECONDS:-30}", "30")
            out[name] = shlex.split(cmd)
    return out


def app_services() -> dict[str, dict[str, Any]]:
    return {n: s for n, s in compose()["services"].items() if n not in INFRA}


def test_compose_runs_postgres_redis_migrate_ingress_and_every_pool() -> None:
    from workers.settings import POOL_SETTINGS

    services = compose()["services"]
    assert {"postgres", "redis", "migrate", "ingress"} <= set(services)
    for pool in POOL_SETTINGS:
        svc = services[f"worker-{pool}"]
        assert svc["command"] == ["syncnode", "worker", pool]
        assert svc["healthcheck"]["test"] == ["CMD", "syncnode", "worker", pool, "--check"]
    assert set(app_services()) == {"migrate", "ingress", *(f"worker-{p}" for p in POOL_SETTINGS)}
    for name, svc in app_services().items():
        assert svc["image"] == "syncnode:latest" and svc["build"]["dockerfile"] == "deploy/Dockerfile"
        env = svc["environment"]
        assert env["SYNCNODE_LOG_FORMAT"] == "json" and "DATABASE_URL" in env and "REDIS_URL" in env
        if name == "migrate":
            assert svc["restart"] == "no"
            assert svc["depends_on"] == {"postgres": {"condition": "service_healthy"}}
        else:  # nothing runs before the release's migration has finished
            assert svc["depends_on"]["migrate"] == {"condition": "service_completed_successfully"}
            assert svc["healthcheck"]["test"][0] == "CMD"
    for name in ("postgres", "redis"):
        assert services[name]["healthcheck"]["test"]
    assert services["redis"]["command"][:5] == ["redis-server", "--appendonly", "yes", "--appendfsync", "everysec"]
    assert "/healthz" in " ".join(services["ingress"]["healthcheck"]["test"])


def test_every_command_is_the_procfile_s_and_parses_in_the_cli(monkeypatch: pytest.MonkeyPatch) -> None:
    from ingress import cli

    ran: list[tuple[str, Any]] = []

    def recorder(name: str) -> Any:
        def record(args: Any) -> int:
            ran.append((name, args))
            return 0
        return record

    for name in ("cmd_up", "cmd_down", "cmd_migrate", "cmd_accounts_create", "cmd_worker"):
        monkeypatch.setattr(cli, name, recorder(name))
    commands = [s["command"] for s in app_services().values()]
    commands += [s["healthcheck"]["test"][1:] for s in app_services().values()
                 if s.get("healthcheck", {}).get("test", [None, None])[1] == "syncnode"]
    for argv in commands:
        if argv[0] == "syncnode":
            assert cli.main(argv[1:]) == 0, argv
            assert ran[-1][0] in ("cmd_migrate", "cmd_worker")
    assert ran[0][0] == "cmd_migrate" and sum(1 for r in ran if r[0] == "cmd_worker" and r[1].check) == 6
    # The same processes as the Procfile, command for command.
    service_cmds = [s["command"] for s in app_services().values()]
    for process, argv in procfile().items():
        assert argv in service_cmds, f"Procfile's {process} ({argv}) has no compose service"
    web = procfile()["web"]
    assert web[:2] == ["uvicorn", "ingress.app:create_app"] and "--factory" in web and "--no-access-log" in web


def test_the_dockerfile_installs_the_package_and_runs_as_a_user() -> None:
    text = (DEPLOY / "Dockerfile").read_text()
    assert re.search(r"^FROM python:3\.12-slim$", text, re.M)
    assert re.search(r"^RUN pip install \.", text, re.M)
    users = re.findall(r"^USER (\S+)$", text, re.M)
    assert users and users[-1] not in ("root", "0")
    cmd = json.loads(re.findall(r"^CMD (\[.*\])$", text, re.M)[-1])
    assert cmd == procfile()["web"]
    for package in ("ingress", "jobs", "storage", "workers", "billing"):
        assert f"COPY {package} ./{package}" in text
    assert yaml.safe_load((DEPLOY / "prometheus.yml").read_text())["scrape_configs"][0]["metrics_path"] == "/metrics"


async def _check(pool: str) -> int:
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "ingress.cli", "worker", pool, "--check",
                                                stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL)
    return await proc.wait()


async def test_worker_check_reads_the_pool_s_health_key(chat_worker: Any, app: Any) -> None:
    await app.state.sn.redis.delete(keys.health_check("webhooks"))
    for _ in range(100):  # the worker writes its key on its first loop
        if await app.state.sn.redis.exists(keys.health_check("chat")):
            break
        await asyncio.sleep(0.05)
    assert await _check("chat") == 0
    assert await _check("webhooks") == 1


async def test_worker_check_finds_the_redis_of_make_run(tmp_path: Path) -> None:
    # Without REDIS_URL it read redis://127.0.0.1:6379 (another Redis, or none), not the embedded
    # one `syncnode up` runs from the data directory, as `syncnode queue` does.
    data = tmp_path / "data"
    server = EmbeddedRedis(data / "redis", persist=False)
    env = {k: v for k, v in os.environ.items() if k != "REDIS_URL"}
    env["SYNCNODE_DATA_DIR"] = str(data)

    async def check(pool: str) -> tuple[int, bytes]:
        proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "ingress.cli", "worker", pool, "--check",
                                                    env=env, stdout=asyncio.subprocess.PIPE,
                                                    stderr=asyncio.subprocess.STDOUT)
        out, _ = await proc.communicate()
        return await proc.wait(), out

    code, out = await check("chat")
    assert code == 1 and b"no Redis to read" in out, out
    redis = Redis.from_url(server.start())
    try:
        await redis.set(keys.health_check("chat"), b"j_complete=1 queued=0")
        assert await check("chat") == (0, b"chat: j_complete=1 queued=0\n")
        assert (await check("media"))[0] == 1
    finally:
        await redis.aclose()
        server.stop()


async def test_the_dashboard_uses_only_metrics_that_exist(client: httpx.AsyncClient, funded: Account,
                                                          chat_worker: Any) -> None:
    from ingress.metrics import rate_limited

    await client.post(CHAT, headers=funded.headers, json={"model": "m", "prompt": "for the dashboard"})
    rate_limited("dashboard-test")
    text = (await client.get("/metrics")).text
    exposed = set()
    for name, kind in re.findall(r"^# TYPE (\S+) (\S+)$", text, re.M):
        exposed |= {name, *(f"{name}{s}" for s in ("_bucket", "_sum", "_count"))} if kind == "histogram" else {name}
    dash = json.loads((DEPLOY / "grafana" / "syncnode.json").read_text())
    exprs = [t["expr"] for p in dash["panels"] for t in p.get("targets", [])]
    used = {m for e in exprs for m in re.findall(r"\bsyncnode_\w+", e)}
    assert used <= exposed, used - exposed
    assert {"syncnode_http_requests_total", "syncnode_http_request_duration_seconds_bucket",
            "syncnode_queue_depth", "syncnode_queue_oldest_age_seconds", "syncnode_dead_letters",
            "syncnode_jobs_total", "syncnode_job_duration_seconds_bucket", "syncnode_provider_errors_total",
            "syncnode_rate_limited_total", "syncnode_ledger_amount_dollars"} <= used
