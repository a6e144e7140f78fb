"""``syncnode queue …``: what is queued, running, deferred and dead, read from Redis (and the task
row from Postgres). Each command prints for a person, or JSON with ``--json``; README
"Inspecting the queues" gives the redis-cli equivalent of each.

Reads only, except ``purge-dead``. Nothing here re-runs a job: a dead job's task was failed and
refunded when it was buried, so running it again would serve a call nobody pays for.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
from redis.asyncio import Redis

from jobs import keys
from jobs.serialize import loads
from jobs.settings import Settings
from storage.deadletters import DeadLetters
from storage.embedded import EmbeddedRedis
from storage.tasks import TaskRepository

NOT_RERUNNABLE = "dead: not re-runnable (its task was failed and refunded when arq gave up on it)"
# Due jobs looked at to tell queued from running; beyond this the counts say "at least".
_SCAN_DUE = 10_000
_TASK_FIELDS = ("id", "uid", "kind", "pool", "model", "status", "cost_micros", "refunded", "error",
                "created_at", "updated_at")


def redis_url(settings: Settings) -> str | None:
    """REDIS_URL, else the embedded Redis a ``syncnode up`` of this data directory runs."""
    if settings.redis_url:
        return settings.redis_url
    # Its password and port are kept in its data directory (the server requires the password).
    return EmbeddedRedis(Path(settings.data_dir) / "redis").running_url()


def _text(v: bytes | None) -> str | None:
    return None if v is None else v.decode("utf-8", "replace")


def _json_or_text(v: bytes | None) -> Any:
    if v is None:
        return None
    try:
        return loads(v)
    except ValueError:
        return _text(v)


def _iso_ms(ms: float | None) -> str | None:
    return None if ms is None else datetime.fromtimestamp(ms / 1000, UTC).isoformat().replace("+00:00", "Z")


async def _now_ms(redis: Redis) -> int:
    sec, usec = await redis.time()
    return int(sec) * 1000 + int(usec) // 1000


async def pool_stats(redis: Redis, dead: DeadLetters, pool: str) -> dict[str, Any]:
    now = await _now_ms(redis)
    q = keys.queue(pool)
    async with redis.pipeline(transaction=False) as pipe:
        pipe.zrangebyscore(q, "-inf", now, start=0, num=_SCAN_DUE)
        pipe.zcount(q, f"({now}", "+inf")
        pipe.get(keys.health_check(pool))
        due, deferred, health = await pipe.execute()
    async with redis.pipeline(transaction=False) as pipe:
        for job_id in due:
            pipe.exists(keys.in_progress_key_prefix + job_id.decode())
        held = await pipe.execute()
    waiting = [j.decode() for j, h in zip(due, held, strict=True) if not h]
    oldest = None
    if waiting:
        job = _json_or_text(await redis.get(keys.job_key_prefix + waiting[0]))
        if isinstance(job, dict) and isinstance(job.get("et"), int):
            oldest = round((now - job["et"]) / 1000, 3)
    workers = [k async for k in redis.scan_iter(match=keys.worker_health(pool, "*"), count=1000)]
    return {"pool": pool, "queued": len(waiting), "running": sum(1 for h in held if h), "deferred": int(deferred),
            "dead": await dead.count(pool), "oldest_queued_age_seconds": oldest, "workers_alive": len(workers),
            "health_check": _text(health), "truncated": len(due) >= _SCAN_DUE}


async def peek(redis: Redis, pool: str, n: int) -> list[dict[str, Any]]:
    """The next ``n`` jobs of a pool's queue, in the order arq takes them (lowest score first)."""
    now = await _now_ms(redis)
    entries = await redis.zrange(keys.queue(pool), 0, max(0, n - 1), withscores=True)
    async with redis.pipeline(transaction=False) as pipe:
        for raw, _ in entries:
            job_id = raw.decode()
            pipe.get(keys.job_key_prefix + job_id)
            pipe.pttl(keys.in_progress_key_prefix + job_id)
            pipe.get(keys.retry_key_prefix + job_id)
            pipe.hmget(keys.task_status(job_id), "uid", "kind")
        res = await pipe.execute()
    out = []
    for i, (raw, score) in enumerate(entries):
        job, lease_ms, tries, (uid, kind) = res[4 * i: 4 * i + 4]
        job = _json_or_text(job)
        state = "running" if lease_ms > 0 else "deferred" if score > now else "queued"
        out.append({"job_id": raw.decode(), "state": state, "function": job.get("f") if isinstance(job, dict) else None,
                    "due": _iso_ms(score), "enqueued": _iso_ms(job.get("et") if isinstance(job, dict) else None),
                    "tries": int(tries) if tries else 0, "lease_ms": lease_ms if lease_ms > 0 else None,
                    "uid": _text(uid), "kind": _text(kind)})
    return out


async def show(redis: Redis, dead: DeadLetters, db: asyncpg.Connection | None, job_id: str) -> dict[str, Any]:
    """Everything known of one job: arq's job and result, its lease, the status hash, the task row."""
    async with redis.pipeline(transaction=False) as pipe:
        pipe.get(keys.job_key_prefix + job_id)
        pipe.get(keys.result_key_prefix + job_id)
        pipe.get(keys.retry_key_prefix + job_id)
        pipe.get(keys.in_progress_key_prefix + job_id)
        pipe.pttl(keys.in_progress_key_prefix + job_id)
        pipe.hgetall(keys.task_status(job_id))
        for pool in keys.POOLS:
            pipe.zscore(keys.queue(pool), job_id)
        job, result, tries, lease, lease_ms, status, *scores = await pipe.execute()
    queued_in = [{"pool": p, "due": _iso_ms(s)} for p, s in zip(keys.POOLS, scores, strict=True) if s is not None]
    row = await TaskRepository(db).by_job_id(job_id) if db is not None else None
    task = {k: row[k] for k in _TASK_FIELDS if k in row} if row is not None else None
    dead_rec = await dead.find(job_id)
    return {
        "job_id": job_id, "queue": queued_in, "arq_job": _json_or_text(job), "arq_result": _json_or_text(result),
        "tries": int(tries) if tries else 0,
        "lease": {"worker": _text(lease), "ttl_ms": lease_ms} if lease is not None else None,
        "status": {k.decode(): _text(v) for k, v in status.items()} or None,
        "task": task, "dead": dead_rec, "note": NOT_RERUNNABLE if dead_rec else None,
    }


# Rendering for a person.

def _table(rows: list[dict[str, Any]], cols: list[str]) -> str:
    if not rows:
        return "(none)"
    cells = [[("-" if r.get(c) is None else str(r.get(c))) for c in cols] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(cols)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(cols, widths, strict=True)).rstrip()]
    lines += ["  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)).rstrip() for row in cells]
    return "\n".join(lines)


def render_stats(stats: list[dict[str, Any]]) -> str:
    cols = ["pool", "queued", "running", "deferred", "dead", "oldest_queued_age_seconds", "workers_alive"]
    out = _table(stats, cols)
    if any(s["truncated"] for s in stats):
        out += f"\n(only the first {_SCAN_DUE} due jobs of a pool were looked at: queued/running are at least)"
    return out


def render_peek(pool: str, jobs: list[dict[str, Any]]) -> str:
    cols = ["job_id", "state", "function", "due", "tries", "lease_ms", "kind", "uid"]
    return f"{pool}: next {len(jobs)} job(s), in the order workers take them\n" + _table(jobs, cols)


def render_dead(pool: str, recs: list[dict[str, Any]]) -> str:
    cols = ["at", "job_id", "function", "tries", "task_id", "uid", "error"]
    return (f"{pool}: {len(recs)} dead job(s), newest first. {NOT_RERUNNABLE[:1].upper()}{NOT_RERUNNABLE[1:]}.\n"
            + _table(recs, cols))


def render_show(d: dict[str, Any]) -> str:
    lines = [f"job {d['job_id']}"]
    if d["note"]:
        lines.append(f"  ** {d['note']} **")
    q = ", ".join(f"{e['pool']} (due {e['due']})" for e in d["queue"]) or "not in any queue"
    lines.append(f"  queue:      {q}")
    lines.append(f"  tries:      {d['tries']}")
    lease = d["lease"]
    lines.append(f"  lease:      {lease['worker']} ({lease['ttl_ms']} ms left)" if lease else "  lease:      none")
    for label, key in (("arq job", "arq_job"), ("arq result", "arq_result"), ("status", "status"),
                       ("task", "task"), ("dead", "dead")):
        v = d[key]
        lines.append(f"  {label + ':':<11} {json.dumps(v, default=str) if v is not None else 'none'}")
    return "\n".join(lines)


def _dumps(v: Any) -> str:
    return json.dumps(v, default=str, indent=2)


async def run(args: argparse.Namespace, settings: Settings, dsn: str | None) -> int:
    url = redis_url(settings)
    if url is None:
        # On stderr: `--json` callers parse stdout.
        print("syncnode queue: no Redis to read: set REDIS_URL, or start SyncNode (make run) first", file=sys.stderr)
        return 1
    redis = Redis.from_url(url)
    dead = DeadLetters(redis, settings.dead_letter_max, settings.dead_letter_ttl_seconds)
    try:
        return await _command(args, redis, dead, dsn)
    finally:
        await redis.aclose()


async def _command(args: argparse.Namespace, redis: Redis, dead: DeadLetters, dsn: str | None) -> int:
    as_json = bool(args.json)
    if args.queue_cmd == "stats":
        stats = [await pool_stats(redis, dead, p) for p in keys.POOLS]
        print(_dumps(stats) if as_json else render_stats(stats))
    elif args.queue_cmd == "peek":
        jobs = await peek(redis, args.pool, args.n)
        print(_dumps(jobs) if as_json else render_peek(args.pool, jobs))
    elif args.queue_cmd == "dead":
        recs = await dead.list(args.pool, args.n)
        print(_dumps(recs) if as_json else render_dead(args.pool, recs))
    elif args.queue_cmd == "purge-dead":
        n = await dead.purge(args.pool)
        print(_dumps({"pool": args.pool, "purged": n}) if as_json else f"{args.pool}: purged {n} dead job record(s)")
    else:
        return await _show(args, redis, dead, dsn)
    return 0


async def _show(args: argparse.Namespace, redis: Redis, dead: DeadLetters, dsn: str | None) -> int:
    db = await asyncpg.connect(dsn) if dsn else None
    try:
        d = await show(redis, dead, db, args.job_id)
    finally:
        if db is not None:
            await db.close()
    if not any(d[k] for k in ("queue", "arq_job", "arq_result", "status", "task", "dead")):
        print(_dumps({"job_id": args.job_id, "error": "unknown job"}) if args.json else f"job {args.job_id}: unknown")
        return 1
    print(_dumps(d) if args.json else render_show(d))
    return 0


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> argparse.ArgumentParser:
    """``syncnode queue``'s sub-commands (the caller sets what runs them)."""
    q: argparse.ArgumentParser = sub.add_parser(
        "queue", help="inspect the job queues (stats, peek, dead, show, purge-dead)")
    qs = q.add_subparsers(dest="queue_cmd", required=True)
    pools = list(keys.POOLS)

    def cmd(name: str, help_: str) -> argparse.ArgumentParser:
        c: argparse.ArgumentParser = qs.add_parser(name, help=help_)
        c.add_argument("--json", action="store_true", help="JSON for scripts")
        return c

    cmd("stats", "per pool: queued, running, deferred, dead, oldest queued age, workers alive")
    c = cmd("peek", "the next jobs of a pool, in the order workers take them")
    c.add_argument("pool", choices=pools)
    c.add_argument("-n", type=int, default=10, help="how many (10)")
    c = cmd("dead", "jobs arq gave up on (their tasks were failed and refunded), newest first")
    c.add_argument("pool", choices=pools)
    c.add_argument("-n", type=int, default=100, help="how many (100)")
    c = cmd("show", "one job: arq job and result, lease, status hash, task row, dead record")
    c.add_argument("job_id")
    c = cmd("purge-dead", "delete a pool's dead-job records")
    c.add_argument("pool", choices=pools)
    return q


def main_async(args: argparse.Namespace, settings: Settings, dsn: str | None) -> int:
    return asyncio.run(run(args, settings, dsn))
