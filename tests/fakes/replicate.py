"""A simulator of Replicate's predictions API on its real wire format (notes/jobs.md §1).

Behaviour comes from the prediction's ``input`` (passed through untouched by the gateway), so a
test needs no side channel. ``input["sim"]`` may hold:
  ``seconds``        time from create to the terminal status (default 0.3); ``starting`` for the
                     first third of it, then ``processing``
  ``outcome``        ``succeeded`` (default) | ``failed`` | ``aborted`` | ``never`` (runs until canceled)
  ``output``         what a succeeded prediction outputs: see ``replicate_files``, which also
                     serves its files (``/files/…``, ``/delivery/…``)
  ``create_delay``   seconds the create request hangs *after* the prediction exists
Models: ``sim/missing`` → 404, ``sim/throttled`` → first create 429 with Retry-After,
``sim/invalid`` → 422 Input validation failed. Key ``r8_bad`` → 401.
File requests are listed by ``GET /_sim/downloads``; ``file_bytes`` in ``GET /_sim/stats`` counts
the bytes actually sent. With a webhook, a ``completed`` event signed with Standard Webhooks is
queued in ``OUTBOX`` (``GET /_outbox`` drains it) and, when ``POST /_config {"deliver": true}``,
also POSTed to the webhook URL.

For benchmarks: ``POST /_sim/seed`` creates many predictions in one request, each with an
absolute ``finish_at`` (or none: runs until canceled), so finish times can be spread instead
of arriving all at once; ``GET /_sim/finished`` reports when each one finished and when its
webhook was delivered. Deliveries run at most ``CONFIG["deliver_concurrency"]`` at a time
on a client with no pool timeout: under load they queue here instead of being dropped.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import heapq
import itertools
import json
import secrets
import time
from datetime import UTC, datetime
from typing import Any

import httpx
import orjson
from standardwebhooks import Webhook
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from tests.fakes import replicate_files
from tests.fakes.replicate_files import DOWNLOADS, KEYS, SENT, delivery, files, output

VERSION = "5c7d5dc6dd8bf75c1acaa8565735e7986bc5b66206b55cca93cb72c9bf15ccaa"

PREDICTIONS: dict[str, dict[str, Any]] = {}
_SIM: dict[str, dict[str, Any]] = {}
CREATES: list[dict[str, Any]] = []
OUTBOX: list[dict[str, Any]] = []
CONFIG: dict[str, Any] = {"deliver": False, "get_429": 0, "deliver_concurrency": 64}
_due: list[tuple[float, int, str]] = []
_seq = itertools.count()
_throttled: set[str] = set()
_ticker: asyncio.Task[None] | None = None
_client: httpx.AsyncClient | None = None
_deliver_slots: asyncio.Semaphore | None = None
# The loop holds only weak references to tasks: an unreferenced delivery could vanish mid-way.
_deliveries: set[asyncio.Task[None]] = set()
STATS = {"gets": 0, "creates": 0, "cancels": 0, "webhooks_sent": 0, "webhooks_delivered": 0,
         "webhooks_failed": 0}


def key_of(pid: str) -> str:
    """The API key that created a prediction (the simulator runs in the tests' process)."""
    return KEYS[pid]


def secret_for(key: str) -> str:
    return "whsec_" + base64.b64encode(hashlib.sha256(b"sim:" + key.encode()).digest()).decode()


def _now() -> str:
    return datetime.now(UTC).isoformat().replace("+00:00", "Z")


def _problem(status: int, title: str, detail: str, headers: dict[str, str] | None = None) -> Response:
    return Response(orjson.dumps({"type": "about:blank", "title": title, "status": status, "detail": detail}),
                    status_code=status, media_type="application/problem+json", headers=headers)


def _key(request: Request) -> str | None:
    h = request.headers.get("authorization", "")
    return h[7:] if h.startswith("Bearer ") and h[7:] != "r8_bad" else None


def _unauthorized() -> Response:
    return _problem(401, "Unauthenticated", "You did not pass a valid authentication token")


def _json(value: Any, status_code: int = 200) -> Response:
    # The stdlib encoder, ASCII-only: it writes what a hostile model's output holds (2**70, lone
    # surrogates as \ud800 escapes) the way Replicate's JSON would carry it.
    return Response(json.dumps(value), status_code=status_code, media_type="application/json")


def _finish(pid: str, status: str, error: str | None = None) -> None:
    p = PREDICTIONS[pid]
    if p["status"] in ("succeeded", "failed", "canceled", "aborted"):
        return
    sim = _SIM[pid]
    p.update(status=status, completed_at=_now(), error=error,
             metrics={"predict_time": sim["seconds"], "total_time": sim["seconds"]})
    if status == "succeeded":
        p["output"] = output(sim["base"], pid, sim.get("output", "file"), sim)
    sim["finished_at"] = time.time()
    if p.get("webhook"):
        body = json.dumps(p)
        msg_id = f"msg_{secrets.token_hex(8)}"
        ts = datetime.now(UTC)
        sig = Webhook(secret_for(KEYS[pid])).sign(msg_id, ts, body)
        headers = {"webhook-id": msg_id, "webhook-timestamp": str(int(ts.timestamp())),
                   "webhook-signature": sig, "content-type": "application/json"}
        OUTBOX.append({"url": p["webhook"], "headers": headers, "body": body, "id": pid})
        if CONFIG["deliver"]:
            t = asyncio.get_running_loop().create_task(_deliver(pid, p["webhook"], headers, body))
            _deliveries.add(t)
            t.add_done_callback(_deliveries.discard)


async def _deliver(pid: str, url: str, headers: dict[str, str], body: str) -> None:
    global _client, _deliver_slots
    n = int(CONFIG["deliver_concurrency"])
    if _client is None or _deliver_slots is None:
        _client = httpx.AsyncClient(timeout=httpx.Timeout(10, pool=None),
                                    limits=httpx.Limits(max_connections=n, max_keepalive_connections=n))
        _deliver_slots = asyncio.Semaphore(n)
    async with _deliver_slots:
        for _ in range(3):  # Replicate retries "a few times" on failures
            try:
                r = await _client.post(url, content=body, headers=headers)
                STATS["webhooks_sent"] += 1
                if r.status_code < 500:
                    _SIM[pid]["delivered_at"] = time.time()
                    STATS["webhooks_delivered"] += 1
                    return
            except httpx.HTTPError:
                pass
            await asyncio.sleep(0.5)
    STATS["webhooks_failed"] += 1


def _advance() -> None:
    now = time.time()
    while _due and _due[0][0] <= now:
        _, _, pid = heapq.heappop(_due)
        sim = _SIM[pid]
        outcome = sim.get("outcome", "succeeded")
        if outcome == "never":
            continue
        _finish(pid, outcome, "The model raised an error: simulated failure" if outcome == "failed" else None)


def _status_now(pid: str) -> None:
    p, sim = PREDICTIONS[pid], _SIM[pid]
    if p["status"] == "starting" and time.time() >= sim["created"] + sim["seconds"] / 3:
        p["status"] = "processing"
        p["started_at"] = _now()


async def _tick() -> None:
    while True:
        _advance()
        await asyncio.sleep(0.02)


def _ensure_ticker() -> None:
    global _ticker
    if _ticker is None or _ticker.done():
        _ticker = asyncio.get_running_loop().create_task(_tick())


async def create(request: Request) -> Response:
    _ensure_ticker()
    key = _key(request)
    if key is None:
        return _unauthorized()
    body = await request.json()
    owner, name = request.path_params.get("owner"), request.path_params.get("name")
    CREATES.append({"path": request.url.path, "body": body, "at": time.time(),
                    "cancel_after": request.headers.get("cancel-after")})
    STATS["creates"] += 1
    if owner is not None:
        if "version" in body:
            return _problem(422, "Input validation failed", "Additional property version is not allowed")
        model = f"{owner}/{name}"
    else:
        version = body.get("version", "")
        if len(version) != 64:
            return _problem(422, "Invalid version or not permitted", "The specified version does not exist "
                            "(or perhaps you don't have permission to use it?)")
        model = "sim/versioned"
    if model == "sim/missing":
        return _problem(404, "Not found", "The requested resource could not be found.")
    if model == "sim/throttled" and key not in _throttled:
        _throttled.add(key)
        return _problem(429, "Too Many Requests", "Request was throttled. Your rate limit resets in ~1s.",
                        {"Retry-After": "1"})
    if model == "sim/invalid":
        return _problem(422, "Input validation failed", "- input.prompt: prompt is required")
    inp = body.get("input") or {}
    sim = dict(inp.get("sim") or {}) if isinstance(inp, dict) else {}
    pred = _register(key, model, body, str(request.base_url).rstrip("/"), sim)
    if sim.get("create_delay"):
        await asyncio.sleep(float(sim["create_delay"]))
    return JSONResponse(pred, status_code=201)


def _register(key: str, model: str, body: dict[str, Any], base: str, sim: dict[str, Any]) -> dict[str, Any]:
    inp = body.get("input") or {}
    sim.setdefault("seconds", 0.3)
    pid = secrets.token_hex(13)
    sim.update(created=time.time(), base=base)
    pred = {
        "id": pid, "model": model, "version": body.get("version", "hidden"), "input": inp, "logs": "",
        "output": None, "data_removed": False, "error": None, "status": "starting", "created_at": _now(),
        "source": "api", "urls": {"get": f"{base}/v1/predictions/{pid}",
                                  "cancel": f"{base}/v1/predictions/{pid}/cancel",
                                  "web": f"https://replicate.com/p/{pid}"},
    }
    if body.get("webhook"):
        pred["webhook"] = body["webhook"]
        pred["webhook_events_filter"] = body.get("webhook_events_filter") or ["start", "completed"]
    PREDICTIONS[pid], _SIM[pid], KEYS[pid] = pred, sim, key
    due = float(sim["finish_at"]) if sim.get("finish_at") else sim["created"] + float(sim["seconds"])
    heapq.heappush(_due, (due, next(_seq), pid))
    return pred


def _seed(body: dict[str, Any], base: str) -> list[str]:
    """Many predictions of one key at once: ``items`` of ``{"webhook", "finish_at", "input"}``."""
    ids = []
    for it in body["items"]:
        sim: dict[str, Any] = {"outcome": "never"} if it.get("finish_at") is None else {"finish_at": it["finish_at"]}
        req = {"input": it.get("input") or {}, "webhook": it.get("webhook")}
        ids.append(_register(body["key"], body.get("model", "bench/model"), req, base, sim)["id"])
    return ids


async def get(request: Request) -> Response:
    _ensure_ticker()
    key = _key(request)
    if key is None:
        return _unauthorized()
    STATS["gets"] += 1
    if CONFIG["get_429"] > 0:
        CONFIG["get_429"] -= 1
        return _problem(429, "Too Many Requests", "Request was throttled.", {"Retry-After": "1"})
    pid = request.path_params["id"]
    if pid not in PREDICTIONS or KEYS[pid] != key:
        return _problem(404, "Not found", "The requested resource could not be found.")
    _advance()
    _status_now(pid)
    if (raw := _SIM[pid].get("raw")) and PREDICTIONS[pid]["output"] == "__raw__":
        body = json.dumps(PREDICTIONS[pid]).replace('"__raw__"', raw)
        return Response(body, media_type="application/json")
    return _json(PREDICTIONS[pid])


async def cancel(request: Request) -> Response:
    key = _key(request)
    if key is None:
        return _unauthorized()
    pid = request.path_params["id"]
    if pid not in PREDICTIONS or KEYS[pid] != key:
        return _problem(404, "Not found", "The requested resource could not be found.")
    STATS["cancels"] += 1
    _finish(pid, "canceled")
    return JSONResponse(PREDICTIONS[pid])


async def list_predictions(request: Request) -> Response:
    key = _key(request)
    if key is None:
        return _unauthorized()
    after = request.query_params.get("created_after", "")
    rows = [p for pid, p in PREDICTIONS.items() if KEYS[pid] == key and p["created_at"] >= after]
    rows.sort(key=lambda p: p["created_at"], reverse=True)
    return JSONResponse({"previous": None, "next": None, "results": rows[:100]})


async def secret(request: Request) -> Response:
    key = _key(request)
    if key is None:
        return _unauthorized()
    return JSONResponse({"key": secret_for(key)})


async def control(request: Request) -> Response:
    op = request.path_params["op"]
    if op == "reset":
        for d in (PREDICTIONS, _SIM):
            d.clear()
        replicate_files.reset()
        CREATES.clear()
        OUTBOX.clear()
        _due.clear()
        _throttled.clear()
        CONFIG.update(deliver=False, get_429=0)
        STATS.update(dict.fromkeys(STATS, 0))
        return JSONResponse({"ok": True})
    if op == "config":
        CONFIG.update(await request.json())
        return JSONResponse(CONFIG)
    if op == "outbox":
        out = list(OUTBOX)
        OUTBOX.clear()
        return JSONResponse(out)
    if op == "creates":
        return JSONResponse(CREATES)
    if op == "downloads":
        return JSONResponse(DOWNLOADS)
    if op == "predictions":
        return _json({pid: {**p, "_finished_at": _SIM[pid].get("finished_at")}
                             for pid, p in PREDICTIONS.items()})
    if op == "stats":
        return JSONResponse({**STATS, **SENT})
    if op == "seed":
        _ensure_ticker()
        return JSONResponse(_seed(await request.json(), str(request.base_url).rstrip("/")))
    if op == "finish":  # [[id, epoch seconds], …]: seeded predictions that should now end
        for pid, at in (await request.json())["items"]:
            _SIM[pid].update(outcome="succeeded", finish_at=at)
            heapq.heappush(_due, (float(at), next(_seq), pid))
        return JSONResponse({"ok": True})
    if op == "finished":
        return JSONResponse({pid: {"finished_at": sim["finished_at"], "delivered_at": sim.get("delivered_at")}
                             for pid, sim in _SIM.items() if "finished_at" in sim})
    return JSONResponse({"error": "unknown"}, status_code=404)


def _routes(prefix: str) -> list[Route]:
    return [
        Route(f"{prefix}/predictions", create, methods=["POST"]),
        Route(f"{prefix}/predictions", list_predictions, methods=["GET"]),
        Route(prefix + "/models/{owner}/{name}/predictions", create, methods=["POST"]),
        Route(prefix + "/predictions/{id}", get, methods=["GET"]),
        Route(prefix + "/predictions/{id}/cancel", cancel, methods=["POST"]),
        Route(f"{prefix}/webhooks/default/secret", secret, methods=["GET"]),
    ]


app = Starlette(routes=[
    *_routes("/v1"),
    Route("/files/{id}/{name}", files, methods=["GET"]),
    Route("/delivery/{id}/{name}", delivery, methods=["GET"]),
    Route("/_sim/{op}", control, methods=["GET", "POST"]),
])
