"""Every Redis key SyncNode writes, in one place (CONTRACT §6).

arq's own keys (``arq:job:<id>``, ``arq:result:<id>``, ``arq:in-progress:<id>``,
``arq:retry:<id>``) keep arq's names so its tooling still reads them.
"""

from __future__ import annotations

from arq.constants import in_progress_key_prefix, job_key_prefix, result_key_prefix, retry_key_prefix

__all__ = [
    "POOLS", "in_progress_key_prefix", "job_key_prefix", "result_key_prefix", "retry_key_prefix",
    "queue", "wake", "task_status", "done", "reply", "metrics", "health_check", "poll_chain", "finishing",
    "create_reruns",
]

# One arq queue (and one worker pool) per kind of provider work.
POOLS = ("chat", "media", "poll", "moderation", "billing", "webhooks")


def queue(pool: str) -> str:
    """ZSET of job ids scored by the ms timestamp they become runnable (arq's queue)."""
    return f"syncnode:queue:{pool}"


def wake(pool: str) -> str:
    """LIST an enqueue pushes a token on so one idle worker of the pool wakes at once (BLPOP)."""
    return f"syncnode:wake:{pool}"


def task_status(job_id: str) -> str:
    """HASH status/output/error/updated_at/uid that /prediction-status reads."""
    return f"syncnode:task:{job_id}"


def done(job_id: str) -> str:
    """LIST the worker pushes the final result on when the task names no reply list."""
    return f"syncnode:done:{job_id}"


def reply(instance: str) -> str:
    """LIST of one ingress process: ``<job_id>\\0<result>`` of the tasks its requests wait for."""
    return f"syncnode:reply:{instance}"


def metrics(name: str) -> str:
    """HASH of counters workers flush for the ingress /metrics endpoint to export."""
    return f"syncnode:metrics:{name}"


def health_check(pool: str) -> str:
    """arq's health string for a pool (``arq --check``)."""
    return f"{queue(pool)}:health-check"


def poll_chain(job_id: str) -> str:
    """STRING: the id of the prediction's latest poll job (the sweeper checks it is alive)."""
    return f"syncnode:poll:{job_id}"


def create_reruns(job_id: str) -> str:
    """STRING counter: how often the sweeper re-ran a media create that arq gave up on mid-create."""
    return f"syncnode:reruns:{job_id}"


def finishing(job_id: str) -> str:
    """STRING lock (SET NX EX): one poll/webhook run at a time re-hosts and finishes a prediction."""
    return f"syncnode:finishing:{job_id}"


def blob(sha256_hex: str) -> str:
    """STRING with TTL: a checked moderation image, by content hash, for the worker to read."""
    return f"syncnode:blob:{sha256_hex}"


def replay_waiters(job_id: str) -> str:
    """STRING counter with TTL: Idempotency-Key replays waiting on a task still running."""
    return f"syncnode:replaying:{job_id}"


def rehost_runs(job_id: str) -> str:
    """STRING counter with TTL: how many runs started re-hosting a prediction's output (bounded)."""
    return f"syncnode:rehosts:{job_id}"


def hosted_output(job_id: str) -> str:
    """STRING with TTL: JSON [output, hosting error] of a re-hosted prediction, kept until its task
    is completed so a run whose completion write failed is finished without copying again."""
    return f"syncnode:hosted:{job_id}"


def prework(uid: str) -> str:
    """STRING counter with TTL: an account's requests doing work before their charge (images)."""
    return f"syncnode:prework:{uid}"


def webhook_slots(uid: str) -> str:
    """ZSET of an account's webhook attempts in flight, scored by when each hold ends."""
    return f"syncnode:webhook-slots:{uid}"


__all__ += ["blob", "replay_waiters", "rehost_runs", "hosted_output", "prework", "webhook_slots"]


def chat_stream(job_id: str) -> str:
    """STREAM (XADD, MAXLEN-bounded, expiring) of a streamed chat task's chunks, then one end entry."""
    return f"syncnode:stream:{job_id}"


def stream_cancel(job_id: str) -> str:
    """STRING with TTL: the client of a streamed task went away; its worker stops reading."""
    return f"syncnode:stream-cancel:{job_id}"


def models_cache(provider: str, scope: str) -> str:
    """STRING with TTL: a provider's model list for GET /v1/models (scope: "all" or a key's hash)."""
    return f"syncnode:models:{provider}:{scope}"


__all__ += ["chat_stream", "stream_cancel", "models_cache"]


def webhook_lookups(uid: str) -> str:
    """STRING counter with TTL: an account's webhook address lookups under way at submit."""
    return f"syncnode:webhook-lookups:{uid}"


__all__ += ["webhook_lookups"]


def stream_relays(job_id: str) -> str:
    """STRING counter with TTL: SSE relays of one streamed task open at once (all ingresses)."""
    return f"syncnode:relays:task:{job_id}"


def account_relays(uid: str) -> str:
    """STRING counter with TTL: SSE relays of one account's streamed tasks open at once."""
    return f"syncnode:relays:account:{uid}"


__all__ += ["stream_relays", "account_relays"]

# Per-account limits and dead letters (issue 11).
IN_FLIGHT_PREFIX = "syncnode:inflight:"


def rate_bucket(uid: str, group: str) -> str:
    """HASH tokens/ts with TTL: an account's token bucket for one route group (ingress/limits.py)."""
    return f"syncnode:rate:{group}:{uid}"


def in_flight(pool: str, uid: str) -> str:
    """ZSET of an account's task job ids in flight on a pool, scored by when each stops counting
    (a leak's bound); a final status removes its member (storage/status.py)."""
    return f"{IN_FLIGHT_PREFIX}{pool}:{uid}"


def dead(pool: str) -> str:
    """ZSET of JSON dead-letter records (jobs arq gave up on), scored by ms time; capped, expiring."""
    return f"syncnode:dead:{pool}"


def last_error(job_id: str) -> str:
    """STRING with TTL: why a task job's latest try was retried (kept for its dead letter)."""
    return f"syncnode:last-error:{job_id}"


def worker_health(pool: str, token: str) -> str:
    """STRING with TTL: one worker's heartbeat (arq's own health-check key is shared by the pool)."""
    return f"{health_check(pool)}:{token}"


__all__ += ["IN_FLIGHT_PREFIX", "rate_bucket", "in_flight", "dead", "last_error", "worker_health"]


def card_attempts(action: str, scope: str, who: str) -> str:
    """STRING counter with TTL: card saves or setups ("attach"/"setup") by one account or address."""
    return f"syncnode:card-{action}:{scope}:{who}"


__all__ += ["card_attempts"]
