"""The task status hash in Redis (``syncnode:task:<id>``), the fast copy of the Postgres row
that /prediction-status reads, and the done list a synchronous request waits on."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from redis.asyncio import Redis

from jobs import keys
from jobs.batch import Combiner
from jobs.names import KINDS
from jobs.results import PUBLIC_STATUS, TaskResult
from jobs.serialize import dumps, loads

DONE_TTL_SECONDS = 120

# A progress update (``publish_progress``) must never overwrite a final status: a poll that read
# "processing" may write after the webhook path published "completed", and /prediction-status
# reads this hash first. So it is written only while the status is in_progress (or unset).
# KEYS[1] the hash; ARGV[1] ttl, then field, value pairs. Returns 1 if written.
_PROGRESS = """
local cur = redis.call('HGET', KEYS[1], 'status')
if cur and cur ~= 'in_progress' then
  return 0
end
redis.call('HSET', KEYS[1], unpack(ARGV, 2))
redis.call('EXPIRE', KEYS[1], ARGV[1])
return 1
"""


def _give_back_slot(prefix: str, job_id: str) -> str:
    """Lua: a final status gives back the task's in-flight slot (ingress/limits.py). This is the
    one place every final status passes, whoever finishes the task (worker, poll, webhook, cancel,
    sweeper). The hash names the account and pool (seeded at enqueue, see ``initial``); the key is
    built here from them, so these scripts are for one Redis, not a Cluster."""
    return f"""
local f = redis.call('HMGET', KEYS[1], 'uid', 'pool')
if f[1] and f[2] then
  redis.call('ZREM', {prefix} .. f[2] .. ':' .. f[1], {job_id})
end
"""


def _write_and_hand_over(first_field: int) -> str:
    """Lua: a final status — the hash, then the result to whoever waits. A synchronous request's
    enqueue named its ingress's reply list in the hash (``ingress/replies.py``): the result goes
    there, prefixed with the job id; otherwise on the task's own done list.
    ARGV[1..4]: hash ttl, done ttl, job id, result; field, value pairs from ``first_field``."""
    return f"""
redis.call('HSET', KEYS[1], unpack(ARGV, {first_field}))
redis.call('EXPIRE', KEYS[1], ARGV[1])
local reply = redis.call('HGET', KEYS[1], 'reply')
if reply then
  redis.call('RPUSH', reply, ARGV[3] .. '\\0' .. ARGV[4])
  redis.call('EXPIRE', reply, ARGV[2])
else
  redis.call('RPUSH', KEYS[2], ARGV[4])
  redis.call('EXPIRE', KEYS[2], ARGV[2])
end
"""


# KEYS: the hash, the done list; ARGV: hash ttl, done ttl, job id, result, then field, value pairs.
_FINAL = _write_and_hand_over(5)
# KEYS[1] the status hash; ARGV[1] the in-flight key prefix, ARGV[2] the job id.
_RELEASE = _give_back_slot("ARGV[1]", "ARGV[2]") + "return 0\n"
# Both in one script: what a final status with a waiter runs (every finished sync request), one
# command instead of two on the answer's path; the slot is given back before the result goes out.
# KEYS as ``_FINAL``; ARGV: hash ttl, done ttl, job id, result, in-flight key prefix, then pairs.
_RELEASE_AND_FINAL = _give_back_slot("ARGV[5]", "ARGV[3]") + _write_and_hand_over(6)


def status_document(job_id: str, status: str, output: Any, error: str | None) -> dict[str, Any]:
    """What GET /prediction-status answers for a task (``status`` in its public spelling).

    Completion webhooks send exactly this too (``workers/webhooks.py``): one function, so the
    two cannot drift."""
    body: dict[str, Any] = {"job_id": job_id, "replicate_status": status, "output": output,
                            "updated": status != "in_progress"}
    if error:
        # A completed task's error is a re-hosting failure: the output holds the provider's URLs.
        body["hosting_error" if status == "completed" else "error"] = error
    return body


def now_iso() -> str:
    return datetime.now(UTC).isoformat().replace("+00:00", "Z")


class StatusStore:
    def __init__(self, redis: Redis, ttl_seconds: int) -> None:
        self.redis = redis
        self.ttl = ttl_seconds
        self._progress = redis.register_script(_PROGRESS)
        # A busy worker's completions meanwhile go out in one pipeline (see ``announce``).
        self._announcements: Combiner[str, tuple[str, TaskResult], None] = Combiner(self._announce_batch)

    @staticmethod
    def initial(uid: str, task_id: int, kind: str) -> dict[str, str]:
        """Fields an enqueue seeds the hash with (see ``jobs.queue.Job.status``)."""
        seed = {"status": "in_progress", "uid": uid, "task_id": str(task_id), "kind": kind,
                "updated_at": now_iso()}
        if kind in KINDS:
            seed["pool"] = KINDS[kind].pool
        return seed

    async def publish(self, job_id: str, result: TaskResult, *, notify: bool = True) -> None:
        """Write a task's final status and, with ``notify``, wake whoever waits on the task."""
        async with self.redis.pipeline(transaction=False) as pipe:
            self._queue_publish(pipe, job_id, result, notify)
            await pipe.execute()

    async def announce(self, job_id: str, result: TaskResult) -> None:
        """``publish``, in one pipeline with every other announcement made meanwhile (jobs/batch.py)."""
        await self._announcements.submit("", (job_id, result))

    async def publish_progress(self, job_id: str, provider_status: str, updated_at: str | None = None) -> bool:
        """Record that a task is still running, unless it already ended; True if written."""
        fields = ["status", PUBLIC_STATUS["running"], "provider_status", provider_status,
                  "updated_at", updated_at or now_iso()]
        return bool(await self._progress(keys=[keys.task_status(job_id)], args=[self.ttl, *fields]))

    async def publish_progress_many(self, items: list[tuple[str, str, str]]) -> None:
        """``publish_progress`` of several tasks, (job id, provider status, updated_at), in one
        pipeline. EVAL, not EVALSHA: a pipeline of registered scripts first asks Redis whether
        it has them (a round trip more), and a NOSCRIPT would cost the whole batch."""
        async with self.redis.pipeline(transaction=False) as pipe:
            for job_id, provider_status, updated_at in items:
                pipe.eval(_PROGRESS, 1, keys.task_status(job_id), self.ttl, "status", PUBLIC_STATUS["running"],
                          "provider_status", provider_status, "updated_at", updated_at)
            await pipe.execute()

    async def _announce_batch(self, _: str, items: list[tuple[str, TaskResult]]) -> list[None]:
        async with self.redis.pipeline(transaction=False) as pipe:
            for job_id, result in items:
                self._queue_publish(pipe, job_id, result, True)
            await pipe.execute()
        return [None] * len(items)

    def _queue_publish(self, pipe: Any, job_id: str, result: TaskResult, notify: bool) -> None:
        fields = {"status": result.status, "output": dumps(result.output), "error": result.error or "",
                  "updated_at": result.updated_at}
        flat = [x for kv in fields.items() for x in kv]
        if notify and result.status != "in_progress":
            # EVAL, not EVALSHA: a NOSCRIPT inside this pipeline would cost the whole publish.
            pipe.eval(_RELEASE_AND_FINAL, 2, keys.task_status(job_id), keys.done(job_id), self.ttl,
                      DONE_TTL_SECONDS, job_id, result.to_json(), keys.IN_FLIGHT_PREFIX, *flat)
            return
        if result.status != "in_progress":
            # Before the result goes out: whoever it wakes may send the next call at once.
            pipe.eval(_RELEASE, 1, keys.task_status(job_id), keys.IN_FLIGHT_PREFIX, job_id)
        if notify:
            pipe.eval(_FINAL, 2, keys.task_status(job_id), keys.done(job_id), self.ttl, DONE_TTL_SECONDS, job_id,
                      result.to_json(), *flat)
            return
        pipe.hset(keys.task_status(job_id), mapping=fields)
        pipe.expire(keys.task_status(job_id), self.ttl)

    async def read(self, job_id: str) -> dict[str, Any] | None:
        raw = await self.redis.hgetall(keys.task_status(job_id))
        if not raw:
            return None
        d = {k.decode(): v.decode() for k, v in raw.items()}
        out: dict[str, Any] = dict(d)
        out["output"] = loads(d["output"]) if d.get("output") else None
        return out
