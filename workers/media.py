"""The media pool's job: create the Replicate prediction of a /generate or /face-swap task.

Creating is the one paid, non-idempotent step, so the job is built around never doing it
twice: ``create_started_at`` is committed before the POST, the prediction id is committed
the moment the answer arrives (before anything else), and a re-run job (worker killed,
timeout) that finds a started create without an id first looks for the prediction at
Replicate (same model and input, created since) and adopts it rather than paying again.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from datetime import timedelta
from typing import Any

import asyncpg
import httpx
from arq.worker import Retry

from jobs.model_refs import is_version
from jobs.names import MEDIA_CREATE
from jobs.settings import Settings
from storage.files.netcheck import is_public_url
from storage.predictions import PredictionRepository
from storage.tasks import TERMINAL, TaskRepository
from workers.context import WorkerContext, wctx
from workers.poll import cancel_prediction, schedule_poll
from workers.providers import replicate
from workers.providers.errors import ProviderError, ProviderRejected, ProviderRetryable
from workers.providers.http import call
from workers.providers.retry import RetryPolicy
from workers.runner import announce, finish_failed, provider_failed

log = logging.getLogger("syncnode.media")

# Replicate's webhook secret per API key (one per Replicate account): fetched once per process.
_secrets: dict[bytes, str] = {}
_SECRET_RETRIES = 1
_LOST_PAGES = 5
_LOOKUP_RETRIES = 1
_LOOKUP_AGAIN_S = 30.0
_UNSURE_PAUSE_S = 1.0


def webhooks_on(w: WorkerContext) -> bool:
    mode = w.settings.replicate_webhooks.lower()
    return mode == "on" or (mode == "auto" and is_public_url(w.settings.public_url))


def webhook_url(w: WorkerContext, job_id: str) -> str:
    return f"{w.settings.public_url}/webhooks/replicate?job_id={job_id}"


async def _webhook_secret(w: WorkerContext, key: str) -> str:
    h = hashlib.sha256(key.encode()).digest()
    if h not in _secrets:
        s = w.settings
        t = s.replicate_create_timeout_seconds
        _secrets[h] = await call(
            replicate.PROVIDER, lambda: replicate.webhook_secret(w.http["Replicate"], key, timeout=t),
            RetryPolicy.provider(s).retries(_SECRET_RETRIES))
    return _secrets[h]


def create_budget_seconds(s: Settings) -> float:
    """The longest the Replicate requests of one create job can take, every try and wait included.

    The media job's timeout is kept above it (workers/settings.py): a job killed by arq's
    timeout is final, and would leave the sweeper to sort out a create whose fate is unknown.
    """
    t = s.replicate_create_timeout_seconds
    retry = RetryPolicy.provider(s)
    secret = retry.retries(_SECRET_RETRIES).longest_call(t)
    lookup = retry.retries(_LOOKUP_RETRIES).longest_call(_LOST_PAGES * t)  # before the create and after an unsure one
    create = retry.longest_call(t)
    return secret + 2 * lookup + create + _UNSURE_PAUSE_S


def _same(pred: dict[str, Any], model: str, input_: Any) -> bool:
    if pred.get("input") != input_:
        return False
    if is_version(model) or ":" in model:
        return bool(pred.get("version") == model.rsplit(":", 1)[-1])
    return bool(pred.get("model") == model)


async def _find_lost(w: WorkerContext, st: asyncpg.Record, key: str) -> str | None:
    """The id of a prediction an earlier run created but could not record, if Replicate has it."""
    since = (st["create_started_at"] - timedelta(seconds=30)).isoformat().replace("+00:00", "Z")
    req = st["request"]
    s = w.settings
    t = s.replicate_create_timeout_seconds
    try:
        found = await call(replicate.PROVIDER,
                           lambda: replicate.created_since(w.http["Replicate"], key, since, _LOST_PAGES, timeout=t),
                           RetryPolicy.provider(s).retries(_LOOKUP_RETRIES))
    except ProviderRetryable as e:
        # Whether a prediction exists is unknown: failing now would refund work that may be
        # running. arq runs the job again later (then the sweeper, which re-runs it a few times).
        log.warning("looking for the lost prediction of task %s failed (%s); trying again later", st["id"], e)
        raise Retry(defer=_LOOKUP_AGAIN_S) from e
    ids = [p["id"] for p in found if _same(p, req["model"], req["input"])]
    if not ids:
        return None
    free = [i for i in ids if i not in await PredictionRepository(w.db).claimed(ids)]
    if len(free) != 1:
        raise ProviderRejected(replicate.PROVIDER, f"{len(free)} predictions match a lost create request; "
                               "not guessing which one is this task's")
    return str(free[0])


async def _hook(w: WorkerContext, job_id: str, key: str) -> tuple[str | None, bytes | None]:
    """(webhook URL, encrypted secret), or no webhook when it is off or its secret is unavailable:
    polling finishes the task either way, so a failed secret fetch must not fail the task."""
    if not webhooks_on(w):
        return None, None
    try:
        return webhook_url(w, job_id), w.box.encrypt(await _webhook_secret(w, key))
    except (ProviderError, httpx.HTTPError) as e:
        log.warning("no webhook for %s: its secret could not be fetched (%s); polling only", job_id, e)
        return None, None


async def _create(w: WorkerContext, st: asyncpg.Record, job_id: str, key: str) -> str | None:
    """The prediction's id: adopted from an earlier run, or created now. None: canceled before
    any prediction existed (nothing to pay for, nothing to cancel at Replicate)."""
    s = w.settings
    repo = PredictionRepository(w.db)
    if st["create_started_at"] is not None:
        lost = await _find_lost(w, st, key)
        if lost is not None:
            log.warning("adopted prediction %s created by an earlier run of %s", lost, job_id)
            return lost
        if st["cancel_requested"]:
            return None  # the earlier create never happened: do not create one just to cancel it
    hook, secret = await _hook(w, job_id, key)
    await repo.begin_create(job_id, secret)
    req = st["request"]
    elapsed = time.time() - st["created_at"].timestamp()
    cancel_after = int(s.prediction_deadline_seconds - elapsed)

    async def send() -> dict[str, Any]:
        return await replicate.create(w.http["Replicate"], key, req["model"], req["input"], webhook=hook,
                                      cancel_after_s=cancel_after, timeout=s.replicate_create_timeout_seconds)

    try:
        pred = await call(replicate.PROVIDER, send, RetryPolicy.provider(s), metrics=w.metrics)
    except replicate.CreateUncertain:
        await asyncio.sleep(_UNSURE_PAUSE_S)
        lost = await _find_lost(w, await repo.state(job_id) or st, key)
        if lost is None:
            raise
        return lost
    return str(pred["id"])


async def _run(w: WorkerContext, job_id: str) -> str:
    repo = PredictionRepository(w.db)
    st = await repo.state(job_id)
    if st is None:
        return "missing"
    if st["status"] in TERMINAL:
        await announce(w, job_id)
        return "duplicate"
    if st["ciphertext"] is None:
        await finish_failed(w, job_id, "The replicate_key was removed before the task ran", client_error=True)
        return "failed"
    if st["cancel_requested"] and st["provider_id"] is None and st["create_started_at"] is None:
        await finish_failed(w, job_id, "Canceled by the user", status="canceled")
        return "canceled"
    key = w.box.decrypt(st["ciphertext"])
    prediction_id = st["provider_id"]
    if prediction_id is None:
        try:
            created = await _create(w, st, job_id, key)
        except ProviderError as e:
            return await provider_failed(w, job_id, e)
        if created is None:
            await finish_failed(w, job_id, "Canceled by the user", status="canceled")
            return "canceled"
        prediction_id = created
        # First thing after the answer: without this id a re-run could not avoid paying twice.
        await TaskRepository(w.db).set_running(job_id, prediction_id)
    if (await repo.state(job_id, with_request=False) or st)["cancel_requested"]:
        await cancel_prediction(w, key, prediction_id)
        await finish_failed(w, job_id, "Canceled by the user", status="canceled")
        return "canceled"
    await schedule_poll(w, job_id, 0, w.settings.poll_first_seconds)
    return "created"


async def media_create(ctx: dict[str, Any], job_id: str) -> dict[str, Any]:
    w = wctx(ctx)
    start = time.perf_counter()
    outcome = "failed"
    try:
        outcome = await _run(w, job_id)
    except asyncio.CancelledError:
        outcome = "interrupted"  # shutdown: arq runs it again, and the stored state makes that safe
        raise
    except Retry:
        outcome = "retry"
        raise
    except Exception:
        log.exception("media job %s crashed", job_id)
        await finish_failed(w, job_id, "Internal error while creating the prediction")
    finally:
        w.metrics.job(w.pool_name, MEDIA_CREATE, outcome, time.perf_counter() - start)
    return {"outcome": outcome}
