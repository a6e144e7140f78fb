"""A whole gateway on this machine for benchmarks: Postgres (fsync on), Redis, a fake
provider, the ingress and workers, each a process of its own, and CPU accounting over all."""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psutil

from storage.embedded import EmbeddedPostgres, EmbeddedRedis, free_port


def speed_probe() -> str:
    """A yardstick for comparing runs across days: this VM's speed swings by more than the changes
    measured (the same build's direct fake call cost 0.11 CPU-ms one day and 0.20 the next).
    Best of five: one pure-Python loop, one loopback round trip through a socket pair."""
    import socket
    import timeit

    loop_us = min(timeit.repeat("sum(range(10000))", number=200, repeat=5)) / 200 * 1e6
    a, b = socket.socketpair()
    with a, b:
        def hop() -> None:
            a.send(b"x")
            b.recv(1)
        hop_us = min(timeit.repeat(hop, number=2000, repeat=5)) / 2000 * 1e6
    return f"probe: sum(range(10000)) {loop_us:.0f} us, socketpair round trip {hop_us:.1f} us"


def _wait_http(url: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            httpx.get(url, timeout=1)
            return
        except httpx.HTTPError:
            time.sleep(0.05)
    raise RuntimeError(f"{url} did not come up")


async def wait_http(url: str) -> None:
    async with httpx.AsyncClient(timeout=2) as c:
        for _ in range(300):
            try:
                await c.get(url)
                return
            except httpx.HTTPError:
                await asyncio.sleep(0.1)
    raise RuntimeError(f"{url} did not come up")


@dataclass
class Stack:
    tmp: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="syncnode-bench-")))
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    env: dict[str, str] = field(default_factory=dict)

    def start(self, pools: tuple[str, ...] = ("chat",), extra_env: dict[str, str] | None = None) -> None:
        self.pg = EmbeddedPostgres(self.tmp / "pg", fsync=True)
        self.redis = EmbeddedRedis(self.tmp / "redis", persist=False)
        self.fake_port, self.port = free_port(), free_port()
        self.env = dict(os.environ, DATABASE_URL=self.pg.start(), REDIS_URL=self.redis.start(),
                        SYNCNODE_MASTER_KEY="bench", SYNCNODE_LOG_LEVEL="WARNING",
                        SYNCNODE_OPENROUTER_BASE_URL=f"http://127.0.0.1:{self.fake_port}",
                        SYNCNODE_OPENAI_BASE_URL=f"http://127.0.0.1:{self.fake_port}/v1",
                        SYNCNODE_ADMIN_TOKEN="bench-admin", FAKE_PROVIDER_RECORD="0",
                        SYNCNODE_LIMITS_ENABLED="false",
                        **(extra_env or {}))
        from storage.migrate import migrate

        asyncio.run(migrate(self.env["DATABASE_URL"]))
        self.spawn("fake", [sys.executable, "-m", "uvicorn", "tests.fakes.chat_provider:app", "--port",
                            str(self.fake_port), "--no-access-log", "--log-level", "warning"])
        self.spawn("web", [sys.executable, "-m", "uvicorn", "ingress.app:create_app", "--factory", "--port",
                           str(self.port), "--no-access-log", "--log-level", "warning"])
        for pool in pools:
            self.spawn(pool, [sys.executable, "-m", "ingress.cli", "worker", pool])
        try:  # a loaded machine can take a while; a stack that never comes up is stopped, not left behind
            _wait_http(f"http://127.0.0.1:{self.port}/healthz", timeout=120)
            _wait_http(f"http://127.0.0.1:{self.fake_port}/_calls", timeout=120)
        except RuntimeError:
            self.stop()
            raise
        time.sleep(1.0)  # workers: pools and clients

    def spawn(self, name: str, cmd: list[str]) -> None:
        self.procs[name] = subprocess.Popen(cmd, env=self.env, stdout=subprocess.DEVNULL,
                                            stderr=open(self.tmp / f"{name}.log", "wb"))

    def account(self, keys: dict[str, str]) -> str:
        """A funded account with stored provider keys; returns its API key."""
        import httpx

        base = f"http://127.0.0.1:{self.port}"
        admin = {"Authorization": "Bearer bench-admin"}
        acct = httpx.post(f"{base}/accounts", headers=admin).json()
        httpx.post(f"{base}/admin/credit", headers=admin, json={"uid": acct["uid"], "amount": 900_000})
        httpx.post(f"{base}/api-keys", headers={"Authorization": f"Bearer {acct['api_key']}"}, json=keys)
        return str(acct["api_key"])

    def pids(self, names: tuple[str, ...]) -> list[psutil.Process]:
        out: list[psutil.Process] = []
        roots = [self.procs[n].pid for n in names if n in self.procs]
        if "postgres" in names and self.pg.proc:
            roots.append(self.pg.proc.pid)
        if "redis" in names and self.redis.proc:
            roots.append(self.redis.proc.pid)
        for pid in roots:
            p = psutil.Process(pid)
            out += [p, *p.children(recursive=True)]
        return out

    def stop(self) -> None:
        for p in self.procs.values():
            p.terminate()
        for p in self.procs.values():
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
        self.redis.stop()
        self.pg.stop()
        shutil.rmtree(self.tmp, ignore_errors=True)


def cpu_seconds(procs: list[psutil.Process]) -> dict[int, float]:
    out = {}
    for p in procs:
        try:
            t = p.cpu_times()
            out[p.pid] = t.user + t.system
        except psutil.NoSuchProcess:
            pass
    return out


def wrk(url: str, conc: int, seconds: int, body: str, headers: dict[str, str]) -> dict[str, Any]:
    """Run wrk with a POST body; returns requests, req/s, p50/p99 in ms, non-2xx count."""
    hdrs = "".join(f'wrk.headers["{k}"] = "{v}"\n' for k, v in headers.items())
    return _wrk(url, conc, seconds, f'wrk.method = "POST"\nwrk.body = [[{body}]]\nwrk.headers["Content-Type"] = '
                f'"application/json"\n{hdrs}')


def wrk_rotating(url: str, conc: int, seconds: int, body: str, api_keys: list[str]) -> dict[str, Any]:
    """``wrk`` with each request sent as the next of ``api_keys`` (a charge per account each)."""
    path = "/" + url.split("/", 3)[3]
    return _wrk(url, conc, seconds, "keys = {" + ",".join(f'"{k}"' for k in api_keys) + "}\ni = 0\n"
                "request = function()\n  i = i + 1\n  return wrk.format('POST', '" + path + "', "
                "{['Authorization'] = 'Bearer ' .. keys[i % #keys + 1], ['Content-Type'] = "
                f"'application/json'}}, [[{body}]])\nend\n")


def _wrk(url: str, conc: int, seconds: int, script: str) -> dict[str, Any]:
    lua = Path(tempfile.mkstemp(suffix=".lua")[1])
    lua.write_text(script)
    out = subprocess.run(["wrk", "-t1", f"-c{conc}", f"-d{seconds}s", "--latency", "-s", str(lua), url],
                         capture_output=True, text=True, check=True).stdout
    lua.unlink()

    def ms(label: str) -> float:
        m = re.search(rf"^\s+{label}\s+([\d.]+)(us|ms|s)\s*$", out, re.M)
        assert m, out
        v, unit = float(m.group(1)), m.group(2)
        return v / 1000 if unit == "us" else v * 1000 if unit == "s" else v

    reqs, rps = re.search(r"(\d+) requests in", out), re.search(r"Requests/sec:\s+([\d.]+)", out)
    assert reqs and rps, out
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return {"requests": int(reqs.group(1)), "rps": float(rps.group(1)),
            "p50": ms("50%"), "p99": ms("99%"), "errors": int(non2xx.group(1)) if non2xx else 0}
