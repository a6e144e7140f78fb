"""Micro-benchmark of the provider client: CPU per chat completion call, httpx's ``client.post``
against the request built by ``workers.providers.http.json_post``, on the same aiohttp-backed
client, against the instant fake provider in its own process.

    .venv/bin/python -m tests.bench.client [--calls 3000]

Prints CPU-µs per call of this process (the client side only) for each way, in alternation.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import time
from typing import Any

from storage.embedded import free_port
from tests.bench.stack import _wait_http
from workers.providers import chat as chat_api
from workers.providers.http import json_post, make_client

BODY: dict[str, Any] = {"model": "openai/gpt-4o", "messages": [{"role": "user", "content": "hi"}],
                        "max_tokens": 50}


async def legacy(client: Any, key: str) -> Any:
    resp = await client.post("/chat/completions", json=BODY, headers={"Authorization": f"Bearer {key}"})
    return resp.json()


async def before(client: Any, key: str) -> Any:
    resp = await client.send(json_post(client, "/chat/completions", BODY, key))
    return resp.json()


async def current(client: Any, key: str) -> Any:
    return await chat_api.complete(client, "OpenRouter", key, BODY)


async def run(port: int, calls: int) -> None:
    client = make_client(f"http://127.0.0.1:{port}", connect_timeout=5, read_timeout=30)
    try:
        for way in (legacy, before, current):
            await way(client, "warm")
        for rnd in range(3):
            for name, way in (("httpx client.post", legacy), ("json_post + client.send", before),
                              ("json_post + transport (chat.complete)", current)):
                t0, c0 = time.perf_counter(), time.process_time()
                for _ in range(calls):
                    await way(client, "sk-or-v1-bench")
                cpu, wall = time.process_time() - c0, time.perf_counter() - t0
                print(json.dumps({"round": rnd, "way": name, "calls": calls,
                                  "cpu_us_per_call": round(cpu * 1e6 / calls, 1),
                                  "wall_us_per_call": round(wall * 1e6 / calls, 1)}), flush=True)
    finally:
        await client.aclose()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--calls", type=int, default=3000)
    a = ap.parse_args()
    port = free_port()
    fake = subprocess.Popen([sys.executable, "-m", "uvicorn", "tests.fakes.chat_provider:app", "--port", str(port),
                             "--no-access-log", "--log-level", "warning"], env={"FAKE_PROVIDER_RECORD": "0",
                                                                               **__import__("os").environ})
    try:
        _wait_http(f"http://127.0.0.1:{port}/_calls")
        asyncio.run(run(port, a.calls))
    finally:
        fake.terminate()
        fake.wait(10)


if __name__ == "__main__":
    main()
