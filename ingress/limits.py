"""Per-account limits: requests per second per route group, and tasks in flight per pool.

* Requests: a token bucket per account and route group in Redis, taken in ONE round trip (a
  Lua script on Redis's clock, so every ingress shares one bucket). Checked right after
  authentication (``ingress.auth.Authenticator.principal``), before a body is read.
* Tasks in flight: a ZSET of job ids per account and pool. ``submit`` adds the job id before
  the charge and takes it back if the charge does not happen; the final status of the task
  removes it (``storage.status``). Each member also carries a deadline, so a slot a crash
  leaked (no final status ever published) frees itself after ``in_flight_ttl_seconds``.

Over either limit: 429 with ``Retry-After`` and ``RateLimit-Limit/Remaining/Reset``, before
anything is charged. Limits come from the settings, overridden per account in Postgres
(``POST /admin/limits``), cached here ``limits_cache_seconds``.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import asyncpg
from redis.asyncio import Redis
from starlette.requests import Request

from ingress.metrics import rate_limited
from jobs import keys
from jobs.errors import RateLimited
from jobs.settings import Settings
from storage.limits import LimitsRepository

GROUPS = ("chat", "media", "moderation", "v1", "read", "account")
IN_FLIGHT_POOLS = ("chat", "media", "moderation")

_READ_PATHS = frozenset({"/prediction-status", "/face-swap/status", "/tasks", "/balance", "/usage"})
_GROUP_BY_PATH = {"/chat-completion": "chat", "/chatgpt-completion": "chat", "/generate": "media",
                  "/face-swap/run": "media", "/moderate": "moderation", "/": "moderation"}

# KEYS[1] the bucket; ARGV rate per second, capacity. Returns allowed (0/1), whole tokens left,
# seconds until one token is back (if refused), seconds until the bucket is full again.
_BUCKET_LUA = """
local rate = tonumber(ARGV[1])
local cap = tonumber(ARGV[2])
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local b = redis.call('HMGET', KEYS[1], 'tokens', 'ts')
local tokens = tonumber(b[1]) or cap
local ts = tonumber(b[2]) or now
tokens = math.min(cap, tokens + math.max(0, now - ts) * rate)
local allowed = 0
if tokens >= 1 then
  tokens = tokens - 1
  allowed = 1
end
redis.call('HSET', KEYS[1], 'tokens', string.format('%.6f', tokens), 'ts', string.format('%.6f', now))
redis.call('PEXPIRE', KEYS[1], math.ceil(cap / rate * 1000) + 1000)
local retry = 0
if allowed == 0 then retry = (1 - tokens) / rate end
return {allowed, math.floor(tokens), string.format('%.6f', retry), string.format('%.6f', (cap - tokens) / rate)}
"""

# KEYS[1] the account's in-flight ZSET for a pool; ARGV limit, job id, ttl seconds.
# Returns admitted (0/1) and how many are in flight now.
_ADMIT_LUA = """
local now = tonumber(redis.call('TIME')[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
local n = redis.call('ZCARD', KEYS[1])
if n >= tonumber(ARGV[1]) then
  return {0, n}
end
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[3]), ARGV[2])
redis.call('EXPIRE', KEYS[1], ARGV[3])
return {1, n + 1}
"""


def route_group(method: str, path: str) -> str:
    if path.startswith("/v1/"):
        return "v1"
    group = _GROUP_BY_PATH.get(path)
    if group is not None and (method == "POST" or path != "/"):  # GET / is the web UI's home page
        return group
    if method == "GET" and (path in _READ_PATHS or path.startswith("/tasks/")):
        return "read"
    return "account"


@dataclass(frozen=True, slots=True)
class Limits:
    """One account's effective limits (0 = no limit)."""
    rate: dict[str, float]
    burst: dict[str, float]
    in_flight: dict[str, int]

    def to_json(self) -> dict[str, dict[str, float]]:
        return {"rate": dict(self.rate), "burst": dict(self.burst),
                "in_flight": {k: float(v) for k, v in self.in_flight.items()}}


def effective(settings: Settings, overrides: dict[str, dict[str, float]]) -> Limits:
    rate = {g: float(overrides.get("rate", {}).get(g, getattr(settings, f"rate_limit_{g}"))) for g in GROUPS}
    burst = {g: float(overrides.get("burst", {}).get(g, max(1.0, rate[g] * settings.limit_burst_seconds)))
             for g in GROUPS}
    in_flight = {p: int(overrides.get("in_flight", {}).get(p, getattr(settings, f"in_flight_{p}")))
                 for p in IN_FLIGHT_POOLS}
    return Limits(rate, burst, in_flight)


def _headers(limit: float, remaining: int, reset_s: float, retry_s: float) -> dict[str, str]:
    return {"Retry-After": str(max(1, math.ceil(retry_s))), "RateLimit-Limit": str(int(limit)),
            "RateLimit-Remaining": str(max(0, remaining)), "RateLimit-Reset": str(max(1, math.ceil(reset_s)))}


class Limiter:
    def __init__(self, settings: Settings, db: asyncpg.Pool, redis: Redis) -> None:
        self.settings = settings
        self.db = db
        self.redis = redis
        self._bucket = redis.register_script(_BUCKET_LUA)
        self._admit = redis.register_script(_ADMIT_LUA)
        self._cache: dict[str, tuple[float, Limits]] = {}

    async def limits(self, uid: str) -> Limits:
        hit = self._cache.get(uid)
        if hit is not None and hit[0] > time.monotonic():
            return hit[1]
        limits = effective(self.settings, await LimitsRepository(self.db).overrides(uid))
        if len(self._cache) > 50_000:
            self._cache.clear()
        self._cache[uid] = (time.monotonic() + self.settings.limits_cache_seconds, limits)
        return limits

    def forget(self, uid: str) -> None:
        """This ingress re-reads ``uid``'s overrides now (others within limits_cache_seconds)."""
        self._cache.pop(uid, None)

    async def check_rate(self, request: Request, uid: str) -> None:
        """Take one token of the request's route group, or refuse it (429)."""
        group = route_group(request.method, request.url.path)
        limits = await self.limits(uid)
        rate, cap = limits.rate[group], limits.burst[group]
        if rate <= 0:
            return
        allowed, left, retry, reset = await self._bucket(keys=[keys.rate_bucket(uid, group)], args=[rate, cap])
        if not int(allowed):
            rate_limited(group)
            raise RateLimited(
                f"Rate limit: at most {rate:g} requests per second (bursts of {int(cap)}) on {group} routes "
                "for this account; retry after Retry-After seconds",
                headers=_headers(cap, int(left), float(reset), float(retry)))

    async def admit(self, uid: str, pool: str, job_id: str) -> bool:
        """Count ``job_id`` in flight on ``pool`` or refuse it (429). False: that pool has no limit."""
        limit = (await self.limits(uid)).in_flight.get(pool, 0)
        if limit <= 0:
            return False
        ok, _ = await self._admit(keys=[keys.in_flight(pool, uid)],
                                  args=[limit, job_id, self.settings.in_flight_ttl_seconds])
        if not int(ok):
            rate_limited(f"in_flight_{pool}")
            raise RateLimited(
                f"Too many tasks in flight: at most {limit} at once on the {pool} pool for this account; "
                "retry when one finishes",
                headers=_headers(limit, 0, 1, 1))
        return True

    async def release(self, uid: str, pool: str, job_id: str) -> None:
        """Give back a slot whose task was never charged."""
        await self.redis.zrem(keys.in_flight(pool, uid), job_id)

    async def check_in_flight(self, uid: str, pool: str) -> None:
        """Refuse early (before a body's costly work) an account whose pool is already full."""
        limit = (await self.limits(uid)).in_flight.get(pool, 0)
        if limit > 0 and await self.redis.zcount(keys.in_flight(pool, uid), time.time(), "+inf") >= limit:
            rate_limited(f"in_flight_{pool}")
            raise RateLimited(
                f"Too many tasks in flight: at most {limit} at once on the {pool} pool for this account; "
                "retry when one finishes",
                headers=_headers(limit, 0, 1, 1))
