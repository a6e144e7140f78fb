"""The one enqueue interface. arq's wire format is known here and in ``workers/runtime/worker.py`` only,
so the queue could be swapped without touching ingress or workers.

An enqueue is one Lua call: it writes ``arq:job:<id>`` exactly as arq's ``enqueue_job`` would
(skipping ids whose job or result still exists, arq's dedupe rule), adds the id to the pool's
queue ZSET, seeds the task's status hash and pushes a wake token for the pool's idle workers
when the job is runnable now, or when it is due before every other deferred job (an idle
worker sleeps until the earliest one is due, ``workers/runtime/worker.py``, and must plan again). Other
deferred jobs push none: each token costs a worker a look at the queue, and a poll chain
enqueues a deferred link per poll.
A synchronous request pipelines that call with a BLPOP on the task's done list: one round trip.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from typing import Any

from arq.jobs import serialize_job
from redis.asyncio import Redis
from redis.exceptions import NoScriptError, WatchError

from jobs import keys
from jobs.batch import Combiner
from jobs.logs import REQUEST_ID
from jobs.serialize import dumps

_ENQUEUE_LUA = """
local function point()
  if #KEYS > 5 then redis.call('SET', KEYS[6], ARGV[4], 'EX', ARGV[7]) end
end
if redis.call('EXISTS', KEYS[1]) == 1 or redis.call('EXISTS', KEYS[2]) == 1 then
  point()
  return 0
end
redis.call('PSETEX', KEYS[1], ARGV[1], ARGV[2])
local score = tonumber(ARGV[3])
local wake = score <= tonumber(ARGV[6])
if not wake then
  local nxt = redis.call('ZRANGEBYSCORE', KEYS[3], '(' .. ARGV[6], '+inf', 'WITHSCORES', 'LIMIT', 0, 1)
  wake = #nxt == 0 or tonumber(nxt[2]) > score
end
redis.call('ZADD', KEYS[3], ARGV[3], ARGV[4])
if wake then
  redis.call('LPUSH', KEYS[4], '1')
  redis.call('LTRIM', KEYS[4], 0, 63)
end
if #ARGV > 7 and redis.call('EXISTS', KEYS[5]) == 0 then
  redis.call('HSET', KEYS[5], unpack(ARGV, 8))
  redis.call('EXPIRE', KEYS[5], ARGV[5])
end
point()
return 1
"""

# arq's default: a job not started within a day of becoming runnable is dropped.
_EXPIRES_EXTRA_MS = 86_400_000
# How far in the past an urgent job is scored. arq takes due jobs lowest score first, so a job
# scored "now" waits behind every overdue one; when a poll worker falls behind, a webhook's
# follow-up would queue behind thousands of routine polls. Scored this far back it goes first.
URGENT_LEAD_MS = 600_000
# The one keyword argument a job may carry: the id of the request that enqueued it, so the
# worker's log lines for the job carry it too (workers/tracing.py takes it off before the call).
REQUEST_ID_ARG = "request_id"


@dataclass(frozen=True, slots=True)
class Job:
    pool: str
    function: str
    job_id: str
    args: tuple[Any, ...] = ()
    defer_ms: int = 0
    # Seeds syncnode:task:<job_id> if it does not exist yet (never overwrites a later status).
    status: dict[str, str] | None = None
    # Run before jobs that are already due (see URGENT_LEAD_MS); only with defer_ms == 0.
    urgent: bool = False
    # Set from the current request (or job) when enqueued; see REQUEST_ID_ARG.
    request_id: str | None = None
    # (key, ttl seconds): a key set to this job's id in the same script, whether or not arq
    # still held the id. A poll chain names its latest link this way (``syncnode:poll:<id>``)
    # without a round trip of its own, and never before the link exists.
    pointer: tuple[str, int] | None = None


def _with_request_id(job: Job) -> Job:
    rid = REQUEST_ID.get()
    return job if rid is None or job.request_id is not None else replace(job, request_id=rid)


class JobQueue:
    def __init__(self, redis: Redis, status_ttl_seconds: int) -> None:
        self.redis = redis
        self.status_ttl = status_ttl_seconds
        self._sha: str | None = None
        self._batches: Combiner[str, Job, bool] = Combiner(self._enqueue_many)

    async def _script_sha(self) -> str:
        if self._sha is None:
            self._sha = await self.redis.script_load(_ENQUEUE_LUA)
        return self._sha

    def _call(self, job: Job, sha: str) -> tuple[str, int, list[str], list[Any]]:
        now = int(time.time() * 1000)
        score = now + job.defer_ms - (URGENT_LEAD_MS if job.urgent and job.defer_ms <= 0 else 0)
        kwargs = {REQUEST_ID_ARG: job.request_id} if job.request_id else {}
        payload = serialize_job(job.function, job.args, kwargs, None, now, serializer=dumps)
        argv: list[Any] = [max(job.defer_ms, 0) + _EXPIRES_EXTRA_MS, payload, score, job.job_id, self.status_ttl,
                           now, job.pointer[1] if job.pointer else 0]
        if job.status:
            for k, v in job.status.items():
                argv += [k, v]
        ks = [
            keys.job_key_prefix + job.job_id, keys.result_key_prefix + job.job_id,
            keys.queue(job.pool), keys.wake(job.pool), keys.task_status(job.job_id),
        ]
        if job.pointer:
            ks.append(job.pointer[0])
        return sha, len(ks), ks, argv

    async def enqueue(self, job: Job) -> bool:
        """Enqueue once; False when arq still holds that job id (a duplicate is a no-op).

        Enqueues that arrive while one pipeline is in flight share the next one.
        """
        # Read here, in the caller's context: the batch may be sent from another request's task.
        return await self._batches.submit("", _with_request_id(job))

    async def _enqueue_many(self, _: str, jobs: list[Job]) -> list[bool]:
        for _attempt in range(2):
            sha = await self._script_sha()
            async with self.redis.pipeline(transaction=False) as pipe:
                for job in jobs:
                    _, n, ks, argv = self._call(job, sha)
                    pipe.evalsha(sha, n, *ks, *argv)
                res = await pipe.execute(raise_on_error=False)
            if any(isinstance(r, NoScriptError) for r in res):
                # Redis restarted and lost its scripts. Re-running the batch is safe: a job
                # already enqueued is skipped (its arq:job key exists).
                self._sha = None
                continue
            for r in res:
                if isinstance(r, Exception):
                    raise r
            return [bool(r) for r in res]
        raise RuntimeError("could not load the enqueue script")

    async def states(self, job_ids: list[str]) -> list[str]:
        """``state`` of many jobs in one round trip."""
        async with self.redis.pipeline(transaction=False) as pipe:
            for job_id in job_ids:
                pipe.exists(keys.job_key_prefix + job_id, keys.in_progress_key_prefix + job_id)
                pipe.exists(keys.result_key_prefix + job_id)
            res = await pipe.execute()
        return ["active" if res[i] else "finished" if res[i + 1] else "absent" for i in range(0, len(res), 2)]

    async def state(self, job_id: str) -> str:
        """"active" (queued or running), "finished" (arq kept only its result) or "absent"."""
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.exists(keys.job_key_prefix + job_id, keys.in_progress_key_prefix + job_id)
            pipe.exists(keys.result_key_prefix + job_id)
            active, finished = await pipe.execute()
        return "active" if active else "finished" if finished else "absent"

    async def depth(self, pool: str) -> int:
        return int(await self.redis.zcard(keys.queue(pool)))

    async def remove(self, pool: str, job_id: str) -> bool:
        """Take a job that has not started off its queue; False if a worker already holds it."""
        async with self.redis.pipeline(transaction=True) as pipe:
            await pipe.watch(keys.in_progress_key_prefix + job_id)
            if await pipe.exists(keys.in_progress_key_prefix + job_id):
                return False
            pipe.multi()
            pipe.zrem(keys.queue(pool), job_id)
            pipe.delete(keys.job_key_prefix + job_id)
            try:
                res = await pipe.execute()
            except WatchError:  # a worker claimed it between our look and the removal
                return False
        return bool(res[0])
