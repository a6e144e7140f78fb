"""Ingress memory under load: RSS of the uvicorn ingress every 5 s during a sync chat run at
concurrency 50 (with the chat worker and the fake provider), and whether it still grows over
the last 30 s.

    .venv/bin/python -m tests.bench.rss [--seconds 60] [--path /chat-completion]

Prints one JSON line per sample and a summary (RSS at the end, growth over the last 30 s).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import tempfile
import time
from pathlib import Path

import psutil

from tests.bench.chat import BODY
from tests.bench.stack import Stack


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=int, default=60)
    ap.add_argument("--conc", type=int, default=50)
    ap.add_argument("--path", default="/chat-completion")
    a = ap.parse_args()
    stack = Stack()
    stack.start(("chat",))
    try:
        key = stack.account({"openrouter_key": "sk-or-v1-bench"})
        lua = Path(tempfile.mkstemp(suffix=".lua")[1])
        lua.write_text(f'wrk.method = "POST"\nwrk.body = [[{BODY}]]\nwrk.headers["Content-Type"] = '
                       f'"application/json"\nwrk.headers["Authorization"] = "Bearer {key}"\n')
        web = psutil.Process(stack.procs["web"].pid)
        samples: list[tuple[float, float]] = []
        start = time.monotonic()
        load = subprocess.Popen(["wrk", "-t1", f"-c{a.conc}", f"-d{a.seconds}s", "-s", str(lua),
                                 f"http://127.0.0.1:{stack.port}{a.path}"], stdout=subprocess.PIPE, text=True)
        while load.poll() is None:
            t = time.monotonic() - start
            mib = web.memory_info().rss / 2**20
            samples.append((t, mib))
            print(json.dumps({"t_s": round(t, 1), "ingress_rss_mib": round(mib, 1)}), flush=True)
            time.sleep(5)
        out = load.communicate()[0]
        lua.unlink()
        tail = [m for t, m in samples if t >= samples[-1][0] - 30]
        print(json.dumps({"end_rss_mib": round(samples[-1][1], 1), "last_30s_growth_mib": round(tail[-1] - tail[0], 1),
                          "last_30s_max_mib": round(max(tail), 1),
                          "wrk": [ln.strip() for ln in out.splitlines() if "Requests/sec" in ln or "Non-2xx" in ln]}))
    finally:
        stack.stop()


if __name__ == "__main__":
    main()
