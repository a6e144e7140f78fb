"""Benchmark of streamed chat completions (``POST /v1/chat/completions`` with ``stream: true``):
the time to first byte the gateway adds over the fake provider's own, at concurrency 1 and 50,
chunks per second through one ingress + one chat worker, and CPU-ms per streamed completion
(and per whole one, ``stream: false``, for comparison).

    .venv/bin/python -m tests.bench.stream [--requests 200] [--seconds 10] [--conc 1,50]

The fake streams 50 chunks with no delay between them (FAKE_STREAM_DELAY_MS=0), so what is
measured is the gateway's own cost. TTFB is the time from sending the request to the first
``data:`` byte; the client is aiohttp in this process (it shares the machine's cores).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import time
from typing import Any

import aiohttp

from tests.bench.stack import Stack, cpu_seconds

GATEWAY = ("web", "chat", "postgres", "redis")
BODY = {"model": "openai/gpt-4o", "messages": [{"role": "user", "content": "hi"}], "stream": True}


async def one(session: aiohttp.ClientSession, url: str, headers: dict[str, str],
              stream: bool = True) -> tuple[float, float, int]:
    """(ttfb s, total s, chunks) of one streamed completion (or of a whole one)."""
    t0 = time.perf_counter()
    ttfb = 0.0
    chunks = 0
    async with session.post(url, json={**BODY, "stream": stream}, headers=headers) as r:
        assert r.status == 200, await r.text()
        if not stream:
            await r.read()
            return time.perf_counter() - t0, time.perf_counter() - t0, 0
        async for line in r.content:
            if line.startswith(b"data: "):
                if not ttfb:
                    ttfb = time.perf_counter() - t0
                if line.startswith(b"data: {"):
                    chunks += 1
    return ttfb, time.perf_counter() - t0, chunks


def pct(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    return round(xs[min(len(xs) - 1, int(len(xs) * p))] * 1000, 2)


async def run(url: str, headers: dict[str, str], conc: int, seconds: float, n_max: int,
              stream: bool = True) -> dict[str, Any]:
    ttfbs: list[float] = []
    totals: list[float] = []
    chunks = 0
    deadline = time.monotonic() + seconds
    conn = aiohttp.TCPConnector(limit=conc)
    async with aiohttp.ClientSession(connector=conn, timeout=aiohttp.ClientTimeout(total=60)) as s:
        async def loop() -> None:
            nonlocal chunks
            while time.monotonic() < deadline and len(ttfbs) < n_max:
                t, total, c = await one(s, url, headers, stream)
                ttfbs.append(t)
                totals.append(total)
                chunks += c

        t0 = time.monotonic()
        await asyncio.gather(*(loop() for _ in range(conc)))
        wall = time.monotonic() - t0
    return {"completions": len(ttfbs), "ttfb_p50_ms": pct(ttfbs, 0.5), "ttfb_p99_ms": pct(ttfbs, 0.99),
            "total_p50_ms": pct(totals, 0.5), "chunks_per_s": round(chunks / wall), "streams_per_s":
            round(len(ttfbs) / wall, 1), "chunks_per_completion": round(chunks / max(len(ttfbs), 1), 1)}


def measure(stack: Stack, name: str, url: str, headers: dict[str, str], conc: int, seconds: float,
            n_max: int, counted: tuple[str, ...], stream: bool = True) -> dict[str, Any]:
    procs = stack.pids(counted)
    before = cpu_seconds(procs)
    r = asyncio.run(run(url, headers, conc, seconds, n_max, stream))
    after = cpu_seconds(procs)
    n = max(r["completions"], 1)
    per = {k: round(sum(after.get(p.pid, 0) - before.get(p.pid, 0) for p in stack.pids((k,))) * 1000 / n, 2)
           for k in counted}
    row = {"scenario": name, "conc": conc, **r, "cpu_ms_per_completion": round(sum(per.values()), 2),
           "cpu_split_ms": per}
    print(json.dumps(row), flush=True)
    return row


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--requests", type=int, default=300, help="at most this many per run")
    ap.add_argument("--seconds", type=float, default=10)
    ap.add_argument("--conc", default="1,50")
    args = ap.parse_args()
    load = os.getloadavg()
    print(f"# {time.strftime('%Y-%m-%d %H:%M')} {platform.node()} {platform.machine()} cores={os.cpu_count()} "
          f"python={platform.python_version()} loadavg={load[0]:.2f},{load[1]:.2f},{load[2]:.2f}", flush=True)
    stack = Stack()
    stack.start(("chat",), extra_env={"FAKE_STREAM_CHUNKS": "50", "FAKE_STREAM_DELAY_MS": "0"})
    try:
        key = stack.account({"openrouter_key": "sk-or-v1-bench"})
        auth = {"Authorization": f"Bearer {key}"}
        gw = f"http://127.0.0.1:{stack.port}/v1/chat/completions"
        direct = f"http://127.0.0.1:{stack.fake_port}/chat/completions"
        asyncio.run(run(gw, auth, 10, 2, 100))  # warm up pools and connections
        rows = []
        for c in [int(x) for x in args.conc.split(",")]:
            rows.append(measure(stack, "direct", direct, {"Authorization": "Bearer x"}, c, args.seconds,
                                args.requests, ("fake",)))
            rows.append(measure(stack, "gateway", gw, auth, c, args.seconds, args.requests, GATEWAY))
            added = round(rows[-1]["ttfb_p50_ms"] - rows[-2]["ttfb_p50_ms"], 2)
            print(json.dumps({"conc": c, "ttfb_added_p50_ms": added}), flush=True)
            # The same completion answered whole (stream: false), for the CPU a stream adds.
            rows.append(measure(stack, "gateway_whole", gw, auth, c, args.seconds, args.requests, GATEWAY,
                                stream=False))
        load = os.getloadavg()
        print(f"# loadavg after: {load[0]:.2f},{load[1]:.2f},{load[2]:.2f}; "
              f"median of totals {statistics.median(r['total_p50_ms'] for r in rows)} ms", flush=True)
    finally:
        stack.stop()


if __name__ == "__main__":
    main()
