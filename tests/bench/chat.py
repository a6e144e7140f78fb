"""Benchmark of the spine: sync chat through the gateway vs the fake upstream called directly,
and the fire-and-poll path (charge + enqueue + answer), at concurrency 1, 10 and 50.

    .venv/bin/python -m tests.bench.chat [--seconds 10] [--conc 1,10,50]

Prints req/s, p50/p99 latency and CPU-ms per request summed over every process of the
gateway (ingress, chat worker, Postgres with fsync on, Redis). Needs `wrk` on PATH.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import time

from tests.bench.stack import Stack, cpu_seconds, speed_probe, wrk, wrk_rotating

GATEWAY = ("web", "chat", "postgres", "redis")
BODY = json.dumps({"model": "openai/gpt-4o", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 50})
GENERATE = json.dumps({"model": "bench/model", "input": {"prompt": "a cat"}})


def measure(stack: Stack, name: str, url: str, conc: int, seconds: int, headers: dict[str, str],
            counted: tuple[str, ...], keys: list[str] | None = None) -> dict[str, object]:
    procs = stack.pids(counted)
    before = cpu_seconds(procs)
    r = wrk_rotating(url, conc, seconds, GENERATE, keys) if keys else wrk(url, conc, seconds, BODY, headers)
    # Listed again: Postgres backends opened during the run (a pool growing) count from zero.
    after = cpu_seconds(stack.pids(counted))
    cpu = sum(t - before.get(pid, 0) for pid, t in after.items())
    per = {n: sum(after.get(p.pid, 0) - before.get(p.pid, 0) for p in stack.pids((n,))) for n in counted}
    row = {"scenario": name, "conc": conc, **r, "cpu_ms_per_req": round(cpu * 1000 / max(r["requests"], 1), 3),
           "cpu_split_ms": {n: round(v * 1000 / max(r["requests"], 1), 3) for n, v in per.items()}}
    print(json.dumps(row), flush=True)
    return row


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=int, default=10)
    ap.add_argument("--conc", default="1,10,50")
    ap.add_argument("--only", default="direct,sync_chat,fire_and_poll,generate")
    args = ap.parse_args()
    concs = [int(c) for c in args.conc.split(",")]
    print(f"# {time.strftime('%Y-%m-%d')} {platform.node()} {platform.machine()} cores={os.cpu_count()} "
          f"python={platform.python_version()} load before={os.getloadavg()[0]:.2f}; {speed_probe()}", flush=True)
    stack = Stack()
    stack.start(("chat",))
    try:
        key = stack.account({"openrouter_key": "sk-or-v1-bench"})
        auth = {"Authorization": f"Bearer {key}"}
        gw = f"http://127.0.0.1:{stack.port}/chat-completion"
        direct = f"http://127.0.0.1:{stack.fake_port}/chat/completions"
        wrk(gw, 10, 2, BODY, auth)  # warm up pools, JIT-less caches, connections
        only = args.only.split(",")
        rows = []
        for c in concs:
            if "direct" in only:
                rows.append(measure(stack, "direct", direct, c, args.seconds, {"Authorization": "Bearer x"},
                                    ("fake",)))
            if "sync_chat" in only:
                rows.append(measure(stack, "sync_chat", gw, c, args.seconds, auth, GATEWAY))
        if "generate" in only:
            # POST /generate over 50 accounts (as tests/bench/poll.py does); no media worker runs,
            # so what is counted is the same charge + enqueue + answer as fire-and-poll chat.
            media = [stack.account({"replicate_key": "r8_bench"}) for _ in range(50)]
            for c in concs:
                rows.append(measure(stack, "generate", f"http://127.0.0.1:{stack.port}/generate", c,
                                    args.seconds, {}, ("web", "postgres", "redis"), keys=media))
        # Fire-and-poll: the worker is paused, so what is counted is charge + enqueue + answer.
        chat = stack.procs["chat"]
        chat.send_signal(signal.SIGSTOP)
        try:
            for c in concs if "fire_and_poll" in only else []:
                rows.append(measure(stack, "fire_and_poll", gw, c, args.seconds,
                                    {**auth, "Prefer": "respond-async"}, ("web", "postgres", "redis")))
        finally:
            chat.send_signal(signal.SIGCONT)
        print("\n| scenario | conc | req/s | p50 ms | p99 ms | CPU-ms/req | errors |")
        print("|---|---|---|---|---|---|---|")
        for r in rows:
            print(f"| {r['scenario']} | {r['conc']} | {r['rps']:.0f} | {r['p50']:.2f} | {r['p99']:.2f} | "
                  f"{r['cpu_ms_per_req']} | {r['errors']} |")
    finally:
        stack.stop()


if __name__ == "__main__":
    main()
