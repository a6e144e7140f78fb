"""Benchmark: moderation with one moderation worker (local models), end to end over HTTP.

    .venv/bin/python -m tests.bench.moderation [--requests 200]

Starts embedded Postgres (fsync on) and Redis, the ingress (uvicorn) and one moderation
worker (``syncnode worker moderation``), each its own process. Reports the worker's cold
start (spawn → first answer, and the model load it logs), p50/p99 latency and req/s for
text only, image only and both at concurrency 1 and 10, the worker's RSS with the models
loaded, and the local models' accuracy on the suite's test sets. Prints numbers; asserts none.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import psutil

from storage.embedded import EmbeddedPostgres, EmbeddedRedis, free_port
from storage.migrate import migrate
from tests.bench.stack import wait_http
from tests.fixtures.moderation import landscape, synthetic_set
from tests.moderation_texts import BENIGN, HARASSMENT_WITHOUT_PROFANITY, MILD, OFFENSIVE

PY = sys.executable


def _pct(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(len(xs) * p))] if xs else float("nan")


async def _load(c: httpx.AsyncClient, body: dict[str, Any], n: int, conc: int) -> dict[str, float]:
    lat: list[float] = []
    errors = 0
    it = iter(range(n))

    async def one() -> None:
        nonlocal errors
        for _ in it:
            t = time.perf_counter()
            r = await c.post("/moderate", json=body)
            lat.append(time.perf_counter() - t)
            errors += r.status_code != 200

    t0 = time.perf_counter()
    await asyncio.gather(*(one() for _ in range(conc)))
    wall = time.perf_counter() - t0
    return {"p50_ms": _pct(lat, 0.5) * 1000, "p99_ms": _pct(lat, 0.99) * 1000, "rps": n / wall,
            "errors": errors}


def accuracy() -> None:
    from workers.moderation import local_image, local_text

    th = 0.5
    ok_b = sum(local_text.offensive(t) < th for t in BENIGN)
    ok_o = sum(local_text.offensive(t) >= th for t in OFFENSIVE)
    print(f"text: benign not vulgar {ok_b}/{len(BENIGN)}, offensive vulgar {ok_o}/{len(OFFENSIVE)}, "
          f"mild profanity flagged {sum(local_text.offensive(t) >= th for t in MILD)}/{len(MILD)}, "
          f"harassment without profanity flagged "
          f"{sum(local_text.offensive(t) >= th for t in HARASSMENT_WITHOUT_PROFANITY)}/"
          f"{len(HARASSMENT_WITHOUT_PROFANITY)}")
    imgs = synthetic_set()
    for name, items in imgs.items():
        scores = [local_image.score(d) for d in items]
        print(f"images {name}: sexual {[round(s.sexual, 3) for s in scores]}, "
              f"graphic {[round(s.graphic, 3) for s in scores]}")


async def main(n: int) -> None:
    tmp = Path(tempfile.mkdtemp(prefix="syncnode-bench-mod-"))
    pg, rd = EmbeddedPostgres(tmp / "pg", fsync=True), EmbeddedRedis(tmp / "redis", persist=False)
    pg.start()
    rd.start()
    procs: list[subprocess.Popen[bytes]] = []
    try:
        await migrate(pg.dsn)
        port = free_port()
        env = {**os.environ, "DATABASE_URL": pg.dsn, "REDIS_URL": rd.url, "SYNCNODE_DATA_DIR": str(tmp / "d"),
               "SYNCNODE_MASTER_KEY": "bench", "SYNCNODE_ADMIN_TOKEN": "bench-admin", "SYNCNODE_PORT": str(port),
               "SYNCNODE_LIMITS_ENABLED": "false"}
        env.pop("SYNCNODE_MODERATION_OPENAI_KEY", None)
        procs.append(subprocess.Popen([PY, "-m", "uvicorn", "ingress.app:create_app", "--factory", "--port",
                                       str(port), "--log-level", "warning"], env=env))
        base = f"http://127.0.0.1:{port}"
        await wait_http(base + "/healthz")
        async with httpx.AsyncClient(base_url=base, timeout=120) as c:
            admin = {"Authorization": "Bearer bench-admin"}
            acct = (await c.post("/accounts", headers=admin, json={})).json()
            await c.post("/admin/credit", headers=admin, json={"uid": acct["uid"], "amount": 10_000})
            c.headers["Authorization"] = f"Bearer {acct['api_key']}"

            t0 = time.perf_counter()
            log = open(tmp / "worker.log", "wb")
            worker = subprocess.Popen([PY, "-m", "ingress.cli", "worker", "moderation"], env=env,
                                      stdout=log, stderr=subprocess.STDOUT)
            procs.append(worker)
            r = await c.post("/moderate", json={"text": "first"})
            cold = time.perf_counter() - t0
            assert r.status_code == 200, r.text
            loaded = [ln for ln in (tmp / "worker.log").read_text().splitlines() if "ready in" in ln]
            print(f"cold start (spawn → first answer): {cold:.2f} s; worker log: {loaded[-1] if loaded else '?'}")

            img = base64.b64encode(landscape("JPEG", size=(640, 480))).decode()
            bodies = {"text": {"text": "Hello, this is a test message. " * 4},
                      "image": {"imageBase64": img, "imageMime": "image/jpeg"},
                      "both": {"text": "Hello, this is a test message. " * 4, "imageBase64": img,
                               "imageMime": "image/jpeg"}}
            for mode, body in bodies.items():
                await _load(c, body, 10, 2)  # warm-up
                for conc in (1, 10):
                    res = await _load(c, body, n if conc > 1 else max(50, n // 2), conc)
                    print(f"{mode:5} c={conc:<2} p50 {res['p50_ms']:7.1f} ms  p99 {res['p99_ms']:7.1f} ms  "
                          f"{res['rps']:6.1f} req/s  errors {int(res['errors'])}")
            rss = psutil.Process(worker.pid).memory_info().rss / 2**20
            print(f"moderation worker RSS with models loaded, after the runs: {rss:.0f} MiB")
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
        rd.stop()
        pg.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    accuracy()


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--requests", type=int, default=200)
    asyncio.run(main(ap.parse_args().requests))
