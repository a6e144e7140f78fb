"""The webhooks pool: delivering completion webhooks (README "Webhooks").

Events come from Postgres: the ``tasks_webhook_event`` trigger (migration 0006) records one in
the same statement that changes a task's status, whichever code path ran it, and NOTIFYs on
commit. Each worker LISTENs and enqueues the event's first attempt at once; a dispatcher (an
arq cron) enqueues any attempt that is overdue, so a lost notification or job only delays it.

Every attempt is its own arq job (``webhook:<event>:<n>``), bounded by
``webhook_timeout_seconds``; a retry is the next job enqueued deferred, never a sleep in a job.
An account has at most ``webhook_account_concurrency`` attempts in flight: a dead endpoint can
hold that many of the pool's slots for one timeout each, never the pool.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

import asyncpg
import httpx
import orjson
from standardwebhooks import Webhook

from jobs import keys
from jobs.names import WEBHOOK_DELIVER
from jobs.queue import Job
from jobs.results import PUBLIC_STATUS
from storage.egress import FetchRefused, guarded_client
from storage.status import status_document
from storage.tasks import TERMINAL
from storage.webhooks import WebhookRepository, signing_secrets
from workers.context import WorkerContext, wctx

log = logging.getLogger("syncnode.webhooks")

CHANNEL = "syncnode_webhooks"
POOL = "webhooks"
# A claimed attempt blocks the next one this much longer than its timeout (its worker may die).
_HOLD_EXTRA_S = 30.0
_ERROR_CHARS = 500


def attempt_job(event_id: int, attempt: int, defer_s: float = 0.0, tag: str = "") -> Job:
    job_id = f"webhook:{event_id}:{attempt}" + (f":{tag}" if tag else "")
    return Job(POOL, WEBHOOK_DELIVER, job_id, (event_id, attempt), defer_ms=int(defer_s * 1000))


def backoff_seconds(w: WorkerContext, attempt: int) -> float:
    """Before attempt ``attempt + 1``: first, doubling, capped, jittered ±10 %."""
    s = w.settings
    base = min(s.webhook_backoff_cap_seconds, s.webhook_backoff_first_seconds * 2.0 ** min(attempt - 1, 40))
    return float(base * random.uniform(0.9, 1.1))


def document(ev: asyncpg.Record) -> dict[str, Any]:
    """The event's status document: what GET /prediction-status answered when it happened."""
    final = ev["task_status"] in TERMINAL
    return status_document(ev["job_id"], PUBLIC_STATUS[ev["task_status"]],
                           ev["output"] if final else None, ev["error"] if final else None)


async def signed_headers(w: WorkerContext, uid: str, msg_id: str, body: bytes) -> dict[str, str]:
    """Standard Webhooks headers; during a rotation's overlap both secrets sign."""
    current, previous, _ = await signing_secrets(w.db, w.box, uid)
    now = datetime.now(UTC)
    text = body.decode()
    sigs = [Webhook(secret).sign(msg_id, now, text) for secret in (current, previous) if secret]
    return {"webhook-id": msg_id, "webhook-timestamp": str(int(now.timestamp())),
            "webhook-signature": " ".join(sigs), "content-type": "application/json",
            "user-agent": "SyncNode-Webhooks/0.1"}


def _client(w: WorkerContext) -> httpx.AsyncClient:
    client = w.http.get("webhooks")
    if client is None:
        s = w.settings
        # The SSRF guard on every connection, pinned to the checked address; redirects stay off.
        client = guarded_client(s.webhook_allow_list, connect_timeout=min(s.fetch_connect_timeout_seconds,
                                                                        s.webhook_timeout_seconds),
                                read_timeout=s.webhook_timeout_seconds, max_connections=s.webhook_concurrency)
        w.http["webhooks"] = client
    return client


async def send(w: WorkerContext, url: str, body: bytes, headers: dict[str, str]
               ) -> tuple[str, int | None, str | None, float | None]:
    """POST once: (outcome, status code, error, Retry-After). Outcome is delivered, retry or failed."""
    try:
        async with asyncio.timeout(w.settings.webhook_timeout_seconds):
            async with _client(w).stream("POST", url, content=body, headers=headers) as resp:
                code = resp.status_code
                retry_after = resp.headers.get("retry-after", "")
    except TimeoutError:
        return "retry", None, f"no answer within {w.settings.webhook_timeout_seconds:g} s", None
    except FetchRefused as e:  # nothing was sent; DNS may point elsewhere later
        return "retry", None, str(e), None
    except httpx.HTTPError as e:
        return "retry", None, f"{type(e).__name__}: {e}".rstrip(": "), None
    if 200 <= code < 300:
        return "delivered", code, None, None
    if code == 429 or code >= 500:
        wait = float(retry_after) if retry_after.isdigit() else None
        return "retry", code, f"HTTP {code}", wait
    if 300 <= code < 400:
        return "failed", code, "redirects are not followed: give the final URL as the webhook", None
    return "failed", code, f"HTTP {code}: the receiver refused it; not retried", None


async def _take_slot(w: WorkerContext, uid: str, token: str, hold_s: float) -> bool:
    key = keys.webhook_slots(uid)
    now = time.time()
    async with w.redis.pipeline(transaction=True) as pipe:
        pipe.zremrangebyscore(key, "-inf", now)
        pipe.zadd(key, {token: now + hold_s})
        pipe.zcard(key)
        pipe.expire(key, int(hold_s) + 1)
        res = await pipe.execute()
    if int(res[2]) <= w.settings.webhook_account_concurrency:
        return True
    await w.redis.zrem(key, token)
    return False


async def deliver(ctx: dict[str, Any], event_id: int, attempt: int) -> dict[str, Any]:
    """Attempt ``attempt`` of event ``event_id``, once, however often this job runs."""
    w = wctx(ctx)
    start = time.perf_counter()
    outcome = "duplicate"
    try:
        outcome = await _deliver(w, event_id, attempt)
        return {"outcome": outcome}
    finally:
        w.metrics.job(w.pool_name, WEBHOOK_DELIVER, outcome, time.perf_counter() - start)


async def _deliver(w: WorkerContext, event_id: int, attempt: int) -> str:
    repo = WebhookRepository(w.db)
    ev = await repo.for_attempt(event_id)
    if ev is None or ev["state"] != "pending" or ev["attempts"] != attempt - 1:
        return "duplicate"
    timeout = w.settings.webhook_timeout_seconds
    token = uuid.uuid4().hex
    if not await _take_slot(w, ev["uid"], token, timeout + _HOLD_EXTRA_S):
        # The account has enough in flight: wait about one timeout for a slot, as a new job.
        await w.queue.enqueue(attempt_job(event_id, attempt, timeout * random.uniform(0.5, 1.0), token[:12]))
        return "waiting"
    try:
        if not await repo.claim(event_id, attempt, timeout + _HOLD_EXTRA_S):
            return "duplicate"
        body = orjson.dumps(document(ev))
        t0 = time.perf_counter()
        outcome: str
        code: int | None
        error: str | None
        retry_after: float | None
        try:
            headers = await signed_headers(w, ev["uid"], f"whevt_{event_id}", body)
        except ValueError as e:  # the secret cannot be decrypted (master key changed): no retry helps
            outcome, code, error, retry_after = "failed", None, str(e), None
        else:
            outcome, code, error, retry_after = await send(w, ev["url"], body, headers)
        took_ms = int((time.perf_counter() - t0) * 1000)
    finally:
        await w.redis.zrem(keys.webhook_slots(ev["uid"]), token)
    return await _record(w, ev, attempt, outcome, code, error, retry_after, took_ms)


async def _record(w: WorkerContext, ev: asyncpg.Record, attempt: int, outcome: str, code: int | None,
                  error: str | None, retry_after: float | None, took_ms: int) -> str:
    s = w.settings
    delay = None
    if outcome == "retry":
        delay = max(backoff_seconds(w, attempt), min(retry_after or 0.0, s.webhook_backoff_cap_seconds))
        if float(ev["age_s"]) + delay > s.webhook_retry_window_seconds:
            outcome, delay = "failed", None
            error = f"{error}; gave up {s.webhook_retry_window_seconds:g} s after the event"
    await WebhookRepository(w.db).finish(ev["id"], attempt, outcome=outcome, status_code=code,
                                         error=error[:_ERROR_CHARS] if error else None, duration_ms=took_ms,
                                         retry_in_s=delay)
    if delay is not None:  # after the commit above, so the next attempt finds this one logged
        await w.queue.enqueue(attempt_job(ev["id"], attempt + 1, delay))
    log.info("webhook %s attempt %d to task %s: %s %s", ev["id"], attempt, ev["job_id"], outcome, code or error)
    return outcome


async def dispatch(ctx: dict[str, Any]) -> dict[str, int]:
    """Enqueue attempts that are overdue: a NOTIFY nobody heard, a job Redis lost, a dead worker."""
    w = wctx(ctx)
    repo = WebhookRepository(w.db)
    expired = await repo.expire(w.settings.webhook_retry_window_seconds + 3600)
    rows = await repo.due(w.settings.webhook_timeout_seconds + 5, 1000)
    for r in rows:
        await w.queue.enqueue(attempt_job(r["id"], r["attempts"] + 1))
    return {"enqueued": len(rows), "expired": expired}


async def listen(w: WorkerContext) -> None:
    """Enqueue each event's first attempt as soon as its transaction commits (LISTEN/NOTIFY)."""
    assert w.settings.database_url
    spawned: set[asyncio.Task[Any]] = set()

    def on_notify(_c: Any, _pid: int, _channel: str, payload: object) -> None:
        t = asyncio.create_task(_enqueue_first(w, int(str(payload))))
        spawned.add(t)
        t.add_done_callback(spawned.discard)

    while True:
        try:
            conn = await asyncpg.connect(w.settings.database_url)
        except (OSError, asyncpg.PostgresError) as e:
            log.warning("webhook listener cannot connect (%s); the dispatcher covers meanwhile", e)
            await asyncio.sleep(2)
            continue
        try:
            await conn.add_listener(CHANNEL, on_notify)
            while True:  # a dead connection shows only when used
                await asyncio.sleep(15)
                await conn.fetchval("SELECT 1")
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as e:
            log.warning("webhook listener lost its connection (%s); reconnecting", e)
        finally:
            with contextlib.suppress(Exception):
                await conn.close(timeout=2)


async def _enqueue_first(w: WorkerContext, event_id: int) -> None:
    try:
        await w.queue.enqueue(attempt_job(event_id, 1))
    except Exception:
        log.exception("enqueue of webhook %s failed; the dispatcher will retry it", event_id)


Hook = Callable[[dict[str, Any]], Awaitable[None]]


def with_listener(on_startup: Hook, on_shutdown: Hook) -> dict[str, Hook]:
    """The pool's startup also starts the LISTEN loop (cancelled with the other background tasks)."""
    async def startup(ctx: dict[str, Any]) -> None:
        await on_startup(ctx)
        w = wctx(ctx)
        w.background.append(asyncio.create_task(listen(w)))

    return {"on_startup": startup, "on_shutdown": on_shutdown}
