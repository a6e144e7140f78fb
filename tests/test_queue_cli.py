"""``syncnode queue …`` against the real Redis and Postgres, run as the operator would: a
subprocess of ``python -m ingress.cli`` with the suite's environment, in text and in JSON."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import httpx

from jobs import keys
from jobs.names import CHAT_OPENROUTER
from jobs.queue import Job
from storage.deadletters import DeadLetters, record
from tests.fixtures.accounts import Account

CHAT = "/chat-completion"


async def queue_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return await asyncio.to_thread(subprocess.run, [sys.executable, "-m", "ingress.cli", "queue", *args],
                                   env=dict(os.environ), capture_output=True, text=True, timeout=60)


async def as_json(*args: str) -> Any:
    p = await queue_cli(*args, "--json")
    assert p.returncode == 0, p.stderr
    return json.loads(p.stdout)


async def _seed(client: httpx.AsyncClient, funded: Account, app: Any) -> dict[str, str]:
    """With no chat worker: two queued tasks, one of them held by a (pretend) worker's lease, a
    deferred job and a dead letter."""
    st = app.state.sn
    ids = []
    for i in range(2):
        r = await client.post(CHAT, headers={**funded.headers, "Prefer": "respond-async"},
                              json={"model": "m", "prompt": f"cli {i} {uuid.uuid4()}"})
        assert r.status_code == 202, r.text
        ids.append(r.json()["job_id"])
    await st.redis.set(keys.in_progress_key_prefix + ids[1], b"host:1:abc", px=60_000)
    deferred = f"deferred-{uuid.uuid4()}"
    await st.queue.enqueue(Job("chat", CHAT_OPENROUTER, deferred, (deferred,), defer_ms=600_000))
    dead_id = f"dead-{uuid.uuid4()}"
    dead = DeadLetters(st.redis, st.settings.dead_letter_max, st.settings.dead_letter_ttl_seconds)
    await dead.add("chat", record(dead_id, "chat", function=CHAT_OPENROUTER, tries=5, task_id=1, uid=funded.uid,
                                  error="ConnectionRefusedError: gone; JobExecutionFailed: max 5 retries exceeded"))
    return {"queued": ids[0], "running": ids[1], "deferred": deferred, "dead": dead_id}


async def _cleanup(app: Any, seeded: dict[str, str]) -> None:
    st = app.state.sn
    await st.redis.delete(keys.in_progress_key_prefix + seeded["running"])
    await st.queue.remove("chat", seeded["deferred"])


async def test_stats_peek_dead_show_and_purge(client: httpx.AsyncClient, funded: Account, app: Any) -> None:
    seeded = await _seed(client, funded, app)
    try:
        await _check_stats(seeded)
        await _check_peek(seeded)
        await _check_dead(seeded)
        await _check_show(seeded, funded)
    finally:
        await _cleanup(app, seeded)
    await _check_purge()


async def _check_stats(seeded: dict[str, str]) -> None:
    stats = {s["pool"]: s for s in await as_json("stats")}
    assert set(stats) == set(keys.POOLS)
    chat = stats["chat"]
    assert chat["queued"] >= 1 and chat["running"] >= 1 and chat["deferred"] >= 1 and chat["dead"] >= 1
    assert chat["oldest_queued_age_seconds"] is not None and chat["oldest_queued_age_seconds"] >= 0
    assert isinstance(chat["workers_alive"], int)
    text = (await queue_cli("stats")).stdout
    assert text.splitlines()[0].split()[:5] == ["pool", "queued", "running", "deferred", "dead"]
    assert any(line.startswith("chat ") for line in text.splitlines())


async def _check_peek(seeded: dict[str, str]) -> None:
    jobs = {j["job_id"]: j for j in await as_json("peek", "chat", "-n", "1000")}
    assert jobs[seeded["queued"]]["state"] == "queued"
    assert jobs[seeded["running"]]["state"] == "running" and jobs[seeded["running"]]["lease_ms"] > 0
    assert jobs[seeded["deferred"]]["state"] == "deferred"
    assert jobs[seeded["queued"]]["function"] == CHAT_OPENROUTER and jobs[seeded["queued"]]["kind"] == "chat"
    text = (await queue_cli("peek", "chat", "-n", "1000")).stdout
    assert "in the order workers take them" in text and seeded["queued"] in text
    assert len(await as_json("peek", "chat", "-n", "1")) == 1


async def _check_dead(seeded: dict[str, str]) -> None:
    recs = await as_json("dead", "chat")
    mine = [r for r in recs if r["job_id"] == seeded["dead"]]
    assert mine and mine[0]["tries"] == 5 and "max 5 retries" in mine[0]["error"]
    text = (await queue_cli("dead", "chat")).stdout
    assert "not re-runnable" in text and seeded["dead"] in text


async def _check_show(seeded: dict[str, str], funded: Account) -> None:
    d = await as_json("show", seeded["running"])
    assert d["queue"][0]["pool"] == "chat" and d["lease"]["worker"] == "host:1:abc"
    assert d["arq_job"]["f"] == CHAT_OPENROUTER
    assert d["status"]["uid"] == funded.uid and d["status"]["status"] == "in_progress"
    assert d["task"]["status"] == "queued" and d["task"]["uid"] == funded.uid and d["dead"] is None
    text = (await queue_cli("show", seeded["queued"])).stdout
    assert text.startswith(f"job {seeded['queued']}") and "task:" in text
    dead = await as_json("show", seeded["dead"])
    assert "not re-runnable" in dead["note"] and dead["dead"]["job_id"] == seeded["dead"]
    assert "not re-runnable" in (await queue_cli("show", seeded["dead"])).stdout
    unknown = await queue_cli("show", "no-such-job")
    assert unknown.returncode == 1 and "unknown" in unknown.stdout


async def _check_purge() -> None:
    n = (await as_json("purge-dead", "chat"))["purged"]
    assert n >= 1
    assert await as_json("dead", "chat") == []
    assert "purged 0" in (await queue_cli("purge-dead", "chat")).stdout


async def test_workers_alive_counts_each_worker(app: Any, chat_worker: Any) -> None:
    for _ in range(50):
        chat = {s["pool"]: s for s in await as_json("stats")}["chat"]
        if chat["workers_alive"] >= 1:
            break
        await asyncio.sleep(0.2)
    assert chat["workers_alive"] >= 1 and "j_complete=" in chat["health_check"]


async def test_bad_arguments_are_refused() -> None:
    p = await queue_cli("peek", "no-such-pool")
    assert p.returncode == 2 and "invalid choice" in p.stderr
    p = await queue_cli("dead")
    assert p.returncode == 2


def test_no_redis_is_said_on_stderr_not_in_the_json(tmp_path: Path) -> None:
    # Beside no running `make run` and no REDIS_URL, the message went to stdout, where a
    # `--json` script reads its JSON.
    env = {k: v for k, v in os.environ.items() if k != "REDIS_URL"}
    env["SYNCNODE_DATA_DIR"] = str(tmp_path / "data")
    p = subprocess.run([sys.executable, "-m", "ingress.cli", "queue", "stats", "--json"], env=env,
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 1
    assert p.stdout == ""
    assert "no Redis to read" in p.stderr
