"""arq ``WorkerSettings`` classes, one per pool. ``syncnode worker <pool>`` runs them with
SyncNode's worker (wake-up + leases); ``arq workers.settings.ChatWorker`` runs them on plain
arq, which works too but polls every ``poll_delay`` and recovers killed jobs more slowly."""

from __future__ import annotations

from typing import Any

from arq import cron, func
from arq.connections import RedisSettings

from jobs import keys, names
from jobs.names import (
    BILLING_RECHARGE,
    BILLING_RECONCILE,
    CHAT_OPENAI,
    CHAT_OPENROUTER,
    MEDIA_CANCEL,
    MEDIA_CREATE,
    MEDIA_POLL,
    SWEEP,
)
from jobs.serialize import dumps, loads
from jobs.settings import get_settings
from workers.billing import run_recharge, run_reconcile, with_stripe
from workers.chat import chat_openai, chat_openrouter, embeddings_openai, embeddings_openrouter
from workers.context import on_shutdown, on_startup_for
from workers.hosting import rehost_budget_seconds
from workers.media import create_budget_seconds, media_create
from workers.moderation.job import moderation_functions, with_models
from workers.poll import media_cancel, media_poll
from workers.sweeper import sweep
from workers.tracing import traced
from workers.webhooks import deliver, dispatch, with_listener

_s = get_settings()


def _common(pool: str, max_jobs: int) -> dict[str, Any]:
    every = max(1, _s.sweep_interval_seconds)
    return {
        "queue_name": keys.queue(pool),
        "redis_settings": RedisSettings.from_dsn(_s.redis_url or "redis://127.0.0.1:6379"),
        "job_serializer": dumps,
        "job_deserializer": loads,
        "poll_delay": _s.poll_delay_seconds,
        "max_jobs": max_jobs,
        "max_tries": 5,
        # A finished job's result only serves arq's dedupe and the sweeper: keep it briefly.
        "keep_result": 300,
        "health_check_interval": 30,
        # Results are not logged: repr() of every result is work nobody reads at this volume.
        "log_results": False,
        "on_startup": on_startup_for(pool, max_jobs),
        "on_shutdown": on_shutdown,
        "cron_jobs": [cron(sweep, name=f"{SWEEP}:{pool}", second=set(range(0, 60, every)),
                           unique=True, run_at_startup=True, timeout=60)],
    }


def _settings(name: str, pool: str, max_jobs: int, functions: list[Any], **hooks: Any) -> type:
    traced_functions = [traced(pool, f) for f in functions]
    return type(name, (), {**_common(pool, max_jobs), "functions": traced_functions, **hooks})


ChatWorker = _settings("ChatWorker", "chat", _s.chat_concurrency, [
    func(chat_openrouter, name=CHAT_OPENROUTER, timeout=_s.chat_job_timeout_seconds),
    func(chat_openai, name=CHAT_OPENAI, timeout=_s.chat_job_timeout_seconds),
    func(embeddings_openrouter, name=names.EMBED_OPENROUTER, timeout=_s.chat_job_timeout_seconds),
    func(embeddings_openai, name=names.EMBED_OPENAI, timeout=_s.chat_job_timeout_seconds),
])
# Above every try of every Replicate request a create makes: arq's timeout is final, and a create
# it cut short leaves a prediction whose fate is unknown (the sweeper re-runs such a job).
_create_timeout = max(_s.media_job_timeout_seconds, create_budget_seconds(_s) + 30)
MediaWorker = _settings("MediaWorker", "media", _s.media_concurrency, [
    func(media_create, name=MEDIA_CREATE, timeout=_create_timeout),
])
# A poll is one GET, but the one that sees the end also re-hosts the outputs, which has its own
# deadline below this (workers.hosting.rehost): it ends as a hosting_error, not a killed job.
_finish_timeout = rehost_budget_seconds(_s) + 60
PollWorker = _settings("PollWorker", "poll", _s.poll_concurrency, [
    func(media_poll, name=MEDIA_POLL, timeout=_finish_timeout),
    func(media_cancel, name=MEDIA_CANCEL, timeout=_s.media_job_timeout_seconds),
])
# Pools whose jobs arrive with later features; each already sweeps its own tasks.
ModerationWorker = _settings(
    "ModerationWorker", "moderation", _s.moderation_concurrency, moderation_functions(_s),
    **with_models(on_startup_for("moderation", _s.moderation_concurrency), on_shutdown))
# No kept result for a recharge: the next one for the account must be enqueueable at once under
# the same job id (the payments table, not arq, is what keeps one in flight).
_stripe_timeout = 4 * _s.stripe_timeout_seconds + 30
BillingWorker = _settings("BillingWorker", "billing", 10, [
    func(run_recharge, name=BILLING_RECHARGE, timeout=_stripe_timeout, keep_result=0, max_tries=3),
], cron_jobs=[
    *_common("billing", 10)["cron_jobs"],
    cron(run_reconcile, name=BILLING_RECONCILE,
         second=set(range(0, 60, max(1, min(59, _s.reconcile_interval_seconds)))),
         unique=True, run_at_startup=True, timeout=_stripe_timeout * 2),
], **with_stripe(on_startup_for("billing", 10), on_shutdown))
# Completion webhooks: one short job per attempt; no tasks of its own to sweep, a dispatcher instead.
_every = max(1, _s.sweep_interval_seconds)
WebhooksWorker = _settings(
    "WebhooksWorker", "webhooks", _s.webhook_concurrency, [
        func(deliver, name=names.WEBHOOK_DELIVER, timeout=_s.webhook_timeout_seconds + 30),
    ],
    cron_jobs=[cron(dispatch, name=names.WEBHOOK_DISPATCH, second=set(range(0, 60, _every)), unique=True,
                    run_at_startup=True, timeout=60)],
    **with_listener(on_startup_for("webhooks", _s.webhook_concurrency), on_shutdown))

POOL_SETTINGS: dict[str, type] = {
    "chat": ChatWorker, "media": MediaWorker, "poll": PollWorker,
    "moderation": ModerationWorker, "billing": BillingWorker, "webhooks": WebhooksWorker,
}
