"""The poll pool: one short job per look at a prediction, and the one way a prediction ends.

A poll job never waits: it GETs the prediction once and, if it is still running, enqueues the
next poll deferred (backoff ~1 s → ``poll_cap_seconds``, jittered; a 429's Retry-After wins)
under a new job id, ``<job_id>:poll:<n>`` (arq will not re-enqueue an id whose result it
still keeps). ``syncnode:poll:<job_id>`` names the latest link so the sweeper can tell a
chain that was lost (``sweep_predictions``). Webhooks enqueue a one-off ``chain=False`` poll,
so both paths go through :func:`finalize`, and ``complete`` / ``finish_unpaid`` only change a
task that is not terminal yet: whatever arrives late or twice, the first terminal status stays.
"""

from __future__ import annotations

import contextlib
import logging
import random
import time
from typing import Any

import asyncpg
import orjson
from redis.exceptions import RedisError

from jobs import keys
from jobs.names import MEDIA_POLL
from jobs.queue import Job
from jobs.results import TaskResult
from storage.predictions import PredictionRepository
from storage.tasks import TERMINAL
from workers.context import WorkerContext, wctx
from workers.hosting import rehost
from workers.output import OutputRefused, normalize_output
from workers.providers import replicate
from workers.providers.errors import ProviderError, ProviderRejected, ProviderRetryable
from workers.providers.http import call
from workers.providers.retry import RetryPolicy
from workers.runner import announce, finish_failed, infrastructure

log = logging.getLogger("syncnode.poll")

_FINISH_LOCK_S = 900
# Runs of re-hosting one prediction may start: the first, and one more after a worker died in
# it. Anything else that fails after re-hosting ends the task in that same run.
_REHOST_RUNS = 2


def backoff(w: WorkerContext, n: int, webhook: bool = False) -> float:
    """The wait before link ``n + 1``. With a webhook registered, polls are the backstop for a
    lost one and stretch to ``poll_webhook_backstop_seconds``: at 10,000 predictions in flight,
    polling them all at the 8 s cap is 1,250 polls/s of work the webhooks already do."""
    s = w.settings
    cap = max(s.poll_cap_seconds, s.poll_webhook_backstop_seconds) if webhook else s.poll_cap_seconds
    # The exponent is capped: 1.6 ** n overflows a float past n ≈ 1500, long after the cap is hit.
    return min(cap, s.poll_first_seconds * 1.6 ** min(n, 64)) * random.uniform(0.8, 1.2)


async def schedule_poll(w: WorkerContext, job_id: str, n: int, delay_s: float, tag: str = "poll") -> None:
    """Enqueue link ``n`` of a chain. ``tag`` names the chain and is passed down its links: a chain
    the sweeper restarts gets a new tag, since arq still keeps the old chain's ids for a while
    and would silently skip an enqueue under one of them."""
    poll_id = f"{job_id}:{tag}:{n}"
    args = (job_id, n, True) if tag == "poll" else (job_id, n, True, tag)
    # The chain key is set by the same enqueue script, so only once the next link exists: the
    # sweeper reads it to find chains that broke. Concurrent polls share one pipeline.
    chain = (keys.poll_chain(job_id), w.settings.prediction_deadline_seconds + 3600)
    await w.queue.enqueue(Job("poll", MEDIA_POLL, poll_id, args, defer_ms=int(delay_s * 1000), pointer=chain))


async def _rehost_allowed(w: WorkerContext, job_id: str) -> bool:
    runs_key = keys.rehost_runs(job_id)
    async with w.redis.pipeline(transaction=True) as pipe:
        pipe.incr(runs_key)
        pipe.expire(runs_key, w.settings.prediction_deadline_seconds + 3600)
        runs, _ = await pipe.execute()
    return int(runs) <= _REHOST_RUNS


async def _hosted(w: WorkerContext, uid: str, job_id: str, pred: dict[str, Any],
                  key: str) -> tuple[Any, str | None]:
    """(output, hosting error): the one an earlier run re-hosted but could not store, or re-hosted
    now and kept until stored. Raises :class:`OutputRefused`."""
    kept = await w.redis.get(keys.hosted_output(job_id))
    if kept is not None:
        output, hosting_error = orjson.loads(kept)
        return output, hosting_error
    output = normalize_output(pred.get("output"), w.settings.output_max_depth)
    if not await _rehost_allowed(w, job_id):
        raise OutputRefused("Copying the outputs was interrupted more than once; the task was refunded")
    output, hosting_error = await rehost(w, uid, job_id, output, key)
    try:
        await w.redis.set(keys.hosted_output(job_id), orjson.dumps([output, hosting_error]),
                          ex=w.settings.prediction_deadline_seconds + 3600)
    except RedisError:
        # Best effort: without it this run still stores the output; only a completion write lost
        # as well would copy again (and a third run refunds, never a loop of copies).
        log.warning("keeping the re-hosted output of %s in Redis failed; storing it now", job_id, exc_info=True)
    return output, hosting_error


async def _succeeded(w: WorkerContext, job_id: str, uid: str, pred: dict[str, Any], key: str) -> str:
    """Normalise (or refuse) the output before re-hosting, re-host at most ``_REHOST_RUNS`` times,
    and end the task in this run whatever fails after re-hosting (never a loop of copies) unless
    our own Postgres was unreachable: then a later link stores the output this run re-hosted."""
    st = await PredictionRepository(w.db).state(job_id, with_request=False)
    if st is None or st["status"] in TERMINAL:  # the other of webhook and poll finished it first
        await announce(w, job_id)
        return "duplicate"
    try:
        output, hosting_error = await _hosted(w, uid, job_id, pred, key)
    except OutputRefused as e:
        await finish_failed(w, job_id, str(e))
        return "failed"
    try:
        row = await PredictionRepository(w.db).complete(job_id, output, hosting_error)
    except Exception as e:
        if not infrastructure(e):
            await _refund_unstored(w, job_id, e)
            return "failed"
        # Refunding would need the same Postgres, and the work is done and in the user's storage:
        # the chain's next link (media_poll reschedules it) completes the task with the kept output.
        log.warning("storing the output of %s failed: our Postgres is unreachable; the next poll stores it",
                    job_id)
        raise
    if row is None:
        await announce(w, job_id)
        return "duplicate"
    # A completed task's error is a re-hosting failure: the output holds the provider's URLs.
    await w.status.publish(job_id, TaskResult.finished(row, "completed", output=output, error=hosting_error))
    # Only now: a link that finds the task completed and this key still there announces it.
    await w.redis.delete(keys.hosted_output(job_id))
    return "completed"


async def _refund_unstored(w: WorkerContext, job_id: str, e: Exception) -> None:
    log.error("storing the output of %s failed after re-hosting", job_id, exc_info=e)
    await finish_failed(w, job_id, f"The output could not be stored ({type(e).__name__}); the task was refunded")
    with contextlib.suppress(RedisError):  # what it guarded is settled; left, it expires
        await w.redis.delete(keys.hosted_output(job_id))


async def finalize(w: WorkerContext, job_id: str, uid: str, pred: dict[str, Any], key: str) -> str:
    """Turn a terminal prediction into the task's terminal state (at most once)."""
    status = pred.get("status")
    if status == "succeeded":
        return await _succeeded(w, job_id, uid, pred, key)
    if status == "canceled":
        await finish_failed(w, job_id, "Canceled", status="canceled")
        return "canceled"
    error = pred.get("error") or ("The prediction was aborted before it started" if status == "aborted"
                                  else "The prediction failed")
    await finish_failed(w, job_id, normalize_output(f"Replicate: {error}"), client_error=True)
    return "failed"


async def cancel_prediction(w: WorkerContext, key: str, prediction_id: str) -> None:
    try:
        await call(replicate.PROVIDER, lambda: replicate.cancel(w.http["Replicate"], key, prediction_id),
                   RetryPolicy.provider(w.settings), metrics=w.metrics)
    except ProviderError as e:  # the task ends anyway; Cancel-After stops it at Replicate too
        log.warning("cancel of prediction %s failed: %s", prediction_id, e)


async def _announce_unpublished(w: WorkerContext, job_id: str, st: asyncpg.Record | None) -> None:
    """A run completed the task but lost the reply (a connection dropped after the commit) or died
    before publishing it: the re-hosted output it kept says nobody announced it yet."""
    if st is not None and st["status"] in TERMINAL and await w.redis.delete(keys.hosted_output(job_id)):
        await announce(w, job_id)


async def _poll(w: WorkerContext, job_id: str, n: int, chain: bool, tag: str = "poll") -> str:
    st = await w.polls.state(job_id)  # batched with the worker's other polls, as fresh as one read
    if st is None or st["status"] in TERMINAL or st["provider_id"] is None:
        await _announce_unpublished(w, job_id, st)
        return "done"
    if st["ciphertext"] is None:
        await finish_failed(w, job_id, "The replicate_key was removed while the prediction ran",
                            client_error=True)
        return "failed"
    # The deadline is read before decrypting, and a key that cannot be decrypted ends the task:
    # before, every poll crashed on it and re-queued itself, so the deadline was never reached.
    deadline = st["created_at"].timestamp() + w.settings.prediction_deadline_seconds
    overdue = time.time() > deadline
    try:
        key = w.box.decrypt(st["ciphertext"])
    except Exception:  # e.g. the master key changed: no poll could ever succeed (Cancel-After stops it)
        log.exception("the replicate_key of %s cannot be decrypted", job_id)
        await finish_failed(w, job_id, "The stored replicate_key cannot be read; set it again")
        return "failed"
    # Past the deadline, a success whose files were copied but not stored yet is still delivered.
    if overdue and not await w.redis.exists(keys.hosted_output(job_id)):
        return await _deadline_locked(w, job_id, key, st["provider_id"], n, chain, tag)
    try:
        pred = await replicate.get(w.http["Replicate"], key, st["provider_id"])
    except ProviderRejected as e:
        await finish_failed(w, job_id, str(e), client_error=True)
        return "failed"
    except Exception as e:  # 429, 5xx, network: try again later, the deadline still holds
        wait = e.retry_after if isinstance(e, ProviderRetryable) and e.retry_after is not None else None
        log.info("poll of %s failed (%s); next in %s", job_id, e, wait or "backoff")
        if chain:
            await schedule_poll(w, job_id, n + 1, (wait + random.uniform(0, 0.5)) if wait else backoff(w, n),
                                tag)
        return "retry"
    status = str(pred.get("status"))
    if status in replicate.TERMINAL:
        return await _finish_locked(w, job_id, st["uid"], pred, key, n, chain, tag)
    if st["cancel_requested"]:
        outcome = await _cancel_locked(w, job_id, st["uid"], key, st["provider_id"])
        if outcome == "busy" and chain:
            await schedule_poll(w, job_id, n + 1, w.settings.poll_cap_seconds, tag)
        return outcome
    if status != st["provider_status"]:
        await w.polls.polled(job_id, status)  # the row, then the status hash (conditionally)
    if chain:
        await schedule_poll(w, job_id, n + 1, backoff(w, n, webhook=st["webhook_secret"] is not None), tag)
    return "pending"


async def _finish_locked(w: WorkerContext, job_id: str, uid: str, pred: dict[str, Any], key: str,
                         n: int, chain: bool, tag: str) -> str:
    # Webhook and poll may both see the end: one re-hosts, the other steps aside. A chain link
    # keeps the chain alive behind the lock in case its holder dies mid-way.
    lock = keys.finishing(job_id)
    if not await w.redis.set(lock, "1", nx=True, ex=_FINISH_LOCK_S):
        if chain:
            await schedule_poll(w, job_id, n + 1, w.settings.poll_cap_seconds, tag)
        return "busy"
    try:
        return await finalize(w, job_id, uid, pred, key)
    finally:
        await w.redis.delete(lock)


async def _deadline_locked(w: WorkerContext, job_id: str, key: str, prediction_id: str,
                           n: int, chain: bool, tag: str) -> str:
    """The deadline under the finishing lock: a prediction whose success is being re-hosted at
    that moment is delivered, never also refunded as failed."""
    lock = keys.finishing(job_id)
    if not await w.redis.set(lock, "1", nx=True, ex=_FINISH_LOCK_S):
        if chain:  # the holder ends the task; a link stays behind it in case the holder dies
            await schedule_poll(w, job_id, n + 1, w.settings.poll_cap_seconds, tag)
        return "busy"
    try:
        await cancel_prediction(w, key, prediction_id)
        await finish_failed(w, job_id, f"The prediction did not finish within "
                                       f"{w.settings.prediction_deadline_seconds} s; it was canceled")
        return "deadline"
    finally:
        await w.redis.delete(lock)


async def _cancel_locked(w: WorkerContext, job_id: str, uid: str, key: str, prediction_id: str) -> str:
    """Cancel under the same lock as finishing: a prediction whose success is being re-hosted is
    delivered (and paid for), never refunded while its files reach the user's storage."""
    lock = keys.finishing(job_id)
    if not await w.redis.set(lock, "1", nx=True, ex=_FINISH_LOCK_S):
        return "busy"
    try:
        await cancel_prediction(w, key, prediction_id)
        try:  # Replicate may have finished first: then the result stands
            pred: dict[str, Any] | None = await replicate.get(w.http["Replicate"], key, prediction_id)
        except ProviderError:
            pred = None
        if pred is not None and pred.get("status") == "succeeded":
            return await finalize(w, job_id, uid, pred, key)
        await finish_failed(w, job_id, "Canceled by the user", status="canceled")
        return "canceled"
    finally:
        await w.redis.delete(lock)


async def media_poll(ctx: dict[str, Any], job_id: str, n: int = 0, chain: bool = True,
                     tag: str = "poll") -> dict[str, Any]:
    w = wctx(ctx)
    start = time.perf_counter()
    outcome = "failed"
    try:
        outcome = await _poll(w, job_id, n, chain, tag)
    except Exception:
        log.exception("poll of %s crashed", job_id)
        if chain:  # never let a bug end the chain silently: the deadline still applies
            await schedule_poll(w, job_id, n + 1, w.settings.poll_cap_seconds, tag)
    finally:
        w.metrics.job(w.pool_name, MEDIA_POLL, outcome, time.perf_counter() - start)
    return {"outcome": outcome}


async def media_cancel(ctx: dict[str, Any], job_id: str) -> dict[str, Any]:
    """Cancel a running prediction at Replicate, then mark the task canceled and refund it."""
    w = wctx(ctx)
    st = await PredictionRepository(w.db).state(job_id, with_request=False)
    if st is None or st["status"] in TERMINAL:
        await announce(w, job_id)
        return {"outcome": "done"}
    if st["provider_id"] is None:
        # The create job is between its POST and storing the id: it sees the flag and cancels.
        return {"outcome": "deferred"}
    if st["ciphertext"] is None:
        await finish_failed(w, job_id, "Canceled by the user", status="canceled")
        return {"outcome": "canceled"}
    return {"outcome": await _cancel_locked(w, job_id, st["uid"], w.box.decrypt(st["ciphertext"]),
                                            st["provider_id"])}


async def sweep_predictions(w: WorkerContext, budget_s: float = 20.0) -> int:
    """Restart the poll chain of running predictions whose chain was lost (Redis flush, bug)."""
    restarted = 0
    after = None
    deadline = time.monotonic() + budget_s
    while time.monotonic() < deadline:
        rows = await PredictionRepository(w.db).running("media", w.settings.sweep_after_seconds, 500, after)
        if not rows:
            break
        restarted += await _restart_lost_chains(w, rows)
        after = (rows[-1]["updated_at"], rows[-1]["id"])
        if len(rows) < 500:
            break
    return restarted


async def _restart_lost_chains(w: WorkerContext, rows: list[asyncpg.Record]) -> int:
    async with w.redis.pipeline(transaction=False) as pipe:
        for r in rows:
            pipe.get(keys.poll_chain(r["job_id"]))
        chains = await pipe.execute()
    alive = await w.queue.states([c.decode() for c in chains if c is not None])
    state_of = dict(zip([c for c in chains if c is not None], alive, strict=True))
    restarted = 0
    for r, chain in zip(rows, chains, strict=True):
        if chain is not None and state_of[chain] == "active":
            continue
        again = await w.redis.get(keys.poll_chain(r["job_id"]))
        if again != chain:
            continue  # the chain moved on while we looked
        # A fresh chain from link 0 under a tag of its own (see schedule_poll).
        await schedule_poll(w, r["job_id"], 0, 0, tag=f"poll-s{time.time_ns():x}")
        log.warning("restarted the lost poll chain of %s", r["job_id"])
        restarted += 1
    return restarted
