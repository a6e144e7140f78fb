"""Web sessions in Redis: the cookie carries a random token, Redis keeps sha256(token) → uid and
the session's CSRF token, so a leaked Redis dump holds no usable cookie."""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass

from redis.asyncio import Redis


@dataclass(frozen=True, slots=True)
class Session:
    uid: str
    csrf: str


def _key(token: str) -> str:
    return "syncnode:session:" + hashlib.sha256(token.encode()).hexdigest()


def _fail_key(scope: str, who: str) -> str:
    return f"syncnode:signin-fail:{scope}:" + hashlib.sha256(who.encode()).hexdigest()


class SessionStore:
    def __init__(self, redis: Redis, ttl_seconds: int) -> None:
        self.redis, self.ttl = redis, ttl_seconds

    async def create(self, uid: str) -> tuple[str, Session]:
        token = secrets.token_urlsafe(32)
        s = Session(uid, secrets.token_urlsafe(24))
        await self.redis.hset(_key(token), mapping={"uid": s.uid, "csrf": s.csrf})
        await self.redis.expire(_key(token), self.ttl)
        return token, s

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
        return Session(d["uid"], d["csrf"])

    async def delete(self, token: str) -> None:
        await self.redis.delete(_key(token))


class FailureCounter:
    """Failed sign-ins per scope (an account's email, a client address) in a fixed window."""

    def __init__(self, redis: Redis, window_seconds: int) -> None:
        self.redis, self.window = redis, window_seconds

    async def count(self, scope: str, who: str) -> int:
        v = await self.redis.get(_fail_key(scope, who))
        return int(v or 0)

    async def ttl(self, scope: str, who: str) -> int:
        return max(1, int(await self.redis.ttl(_fail_key(scope, who))))

    async def add(self, scope: str, who: str) -> None:
        async with self.redis.pipeline(transaction=True) as p:
            p.incr(_fail_key(scope, who))
            p.expire(_fail_key(scope, who), self.window, nx=True)
            await p.execute()

    async def clear(self, scope: str, who: str) -> None:
        await self.redis.delete(_fail_key(scope, who))
