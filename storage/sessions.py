"""Web sessions in Redis: the cookie carries a random token, Redis keeps sha256(token) → uid and
the session's CSRF token, so a leaked Redis dump holds no usable cookie. A session also names
what it was opened with, so it ends with it: the API key's hash (revoking the key ends it) or
the login's stamp (a new password ends it)."""

from __future__ import annotations

import hashlib
import secrets
import time
from dataclasses import dataclass

from redis.asyncio import Redis


@dataclass(frozen=True, slots=True)
class Session:
    uid: str
    csrf: str
    key_hash: str = ""  # hex sha256 of the API key it was opened with
    login_stamp: str = ""  # web_logins.updated_at when it was opened with a password


_PREFIX = "syncnode:session:"
_INDEX = "syncnode:sessions-of:"  # + uid: ZSET of the account's session hashes by creation ms


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def _key(token: str) -> str:
    return _PREFIX + _digest(token)


def _fail_key(scope: str, who: str) -> str:
    return f"syncnode:signin-fail:{scope}:" + hashlib.sha256(who.encode()).hexdigest()


# Create a session and keep the account's index of them (a ZSET of session hashes by creation
# time) under the cap: the oldest are ended (their keys deleted), expired ones are dropped.
# One script, so two concurrent sign-ins cannot both see room for one more.
_CREATE = """
redis.call('HSET', KEYS[1], 'uid', ARGV[1], 'csrf', ARGV[2], 'key', ARGV[3], 'login', ARGV[4])
redis.call('EXPIRE', KEYS[1], ARGV[5])
local now = tonumber(ARGV[6])
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now - tonumber(ARGV[5]) * 1000)
redis.call('ZADD', KEYS[2], now, ARGV[7])
redis.call('EXPIRE', KEYS[2], ARGV[5])
local over = redis.call('ZCARD', KEYS[2]) - tonumber(ARGV[8])
if over > 0 then
  local old = redis.call('ZRANGE', KEYS[2], 0, over - 1)
  for _, m in ipairs(old) do redis.call('DEL', ARGV[9] .. m) end
  redis.call('ZREM', KEYS[2], unpack(old))
end
return over
"""

_DELETE = """
local uid = redis.call('HGET', KEYS[1], 'uid')
redis.call('DEL', KEYS[1])
if uid then redis.call('ZREM', ARGV[1] .. uid, ARGV[2]) end
return 1
"""


class SessionStore:
    def __init__(self, redis: Redis, ttl_seconds: int, max_per_account: int = 20) -> None:
        self.redis, self.ttl, self.cap = redis, ttl_seconds, max(1, max_per_account)

    async def create(self, uid: str, *, key_hash: str = "", login_stamp: str = "") -> tuple[str, Session]:
        token = secrets.token_urlsafe(32)
        s = Session(uid, secrets.token_urlsafe(24), key_hash, login_stamp)
        digest = _digest(token)
        await self.redis.eval(_CREATE, 2, _PREFIX + digest, _INDEX + uid, s.uid, s.csrf, key_hash,
                              login_stamp, self.ttl, int(time.time() * 1000), digest, self.cap, _PREFIX)
        return token, s

    async def count(self, uid: str) -> int:
        return int(await self.redis.zcard(_INDEX + uid))

    async def get(self, token: str) -> Session | None:
        if not token or len(token) > 200:
            return None
        raw = await self.redis.hgetall(_key(token))
        if not raw:
            return None
        d = {(k.decode() if isinstance(k, bytes) else k): (v.decode() if isinstance(v, bytes) else v)
             for k, v in raw.items()}
        if "uid" not in d or "csrf" not in d:
            return None
        return Session(d["uid"], d["csrf"], d.get("key", ""), d.get("login", ""))

    async def delete(self, token: str) -> None:
        if not token or len(token) > 200:
            return
        await self.redis.eval(_DELETE, 1, _key(token), _INDEX, _digest(token))


# Check every scope's counter against its limit and, only if all are under, count this attempt
# in each: one script, so concurrent guesses cannot all read "4 of 5" before any is counted.
# Returns 0 when reserved, else the seconds until the full scope's window ends.
_RESERVE = """
for i, k in ipairs(KEYS) do
  if tonumber(redis.call('GET', k) or '0') >= tonumber(ARGV[i + 1]) then
    return math.max(1, redis.call('TTL', k))
  end
end
for _, k in ipairs(KEYS) do
  redis.call('INCR', k)
  if redis.call('TTL', k) < 0 then redis.call('EXPIRE', k, ARGV[1]) end
end
return 0
"""

_RELEASE = """
for _, k in ipairs(KEYS) do
  if tonumber(redis.call('GET', k) or '0') > 0 then redis.call('DECR', k) end
end
return 1
"""


class FailureCounter:
    """Sign-in attempts per scope (an account's email, a client address) in a fixed window.
    An attempt is counted before its password is checked (reserve) and handed back when it
    succeeds (release), so the count is the number of failed or still-running attempts."""

    def __init__(self, redis: Redis, window_seconds: int) -> None:
        self.redis, self.window = redis, window_seconds

    async def count(self, scope: str, who: str) -> int:
        v = await self.redis.get(_fail_key(scope, who))
        return int(v or 0)

    async def reserve(self, scopes: list[tuple[str, str, int]]) -> int:
        """0 when the attempt is counted in every (scope, who, limit); else the seconds to wait."""
        keys = [_fail_key(scope, who) for scope, who, _ in scopes]
        return int(await self.redis.eval(_RESERVE, len(keys), *keys, self.window,
                                         *(limit for _, _, limit in scopes)))

    async def release(self, scopes: list[tuple[str, str, int]]) -> None:
        keys = [_fail_key(scope, who) for scope, who, _ in scopes]
        await self.redis.eval(_RELEASE, len(keys), *keys)

    async def add(self, scope: str, who: str) -> None:
        async with self.redis.pipeline(transaction=True) as p:
            p.incr(_fail_key(scope, who))
            p.expire(_fail_key(scope, who), self.window, nx=True)
            await p.execute()

    async def clear(self, scope: str, who: str) -> None:
        await self.redis.delete(_fail_key(scope, who))
