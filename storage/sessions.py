"""Web sessions in Redis: the cookie carries a random token, Redis keeps sha256(token) → uid and
the session's CSRF token, so a leaked Redis dump holds no usable cookie. A session also names
what it was opened with, so it ends with it: the API key's hash (revoking the key ends it) or
the login's stamp (a new password ends it)."""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass

from redis.asyncio import Redis


@dataclass(frozen=True, slots=True)
class Session:
    uid: str
    csrf: str
    key_hash: str = ""  # hex sha256 of the API key it was opened with
    login_stamp: str = ""  # web_logins.updated_at when it was opened with a password


def _key(token: str) -> str:
    return "syncnode:session:" + hashlib.sha256(token.encode()).hexdigest()


def _fail_key(scope: str, who: str) -> str:
    return f"syncnode:signin-fail:{scope}:" + hashlib.sha256(who.encode()).hexdigest()


class SessionStore:
    def __init__(self, redis: Redis, ttl_seconds: int) -> None:
        self.redis, self.ttl = redis, ttl_seconds

    async def create(self, uid: str, *, key_hash: str = "", login_stamp: str = "") -> tuple[str, Session]:
        token = secrets.token_urlsafe(32)
        s = Session(uid, secrets.token_urlsafe(24), key_hash, login_stamp)
        async with self.redis.pipeline(transaction=True) as p:
            p.hset(_key(token), mapping={"uid": s.uid, "csrf": s.csrf, "key": key_hash, "login": login_stamp})
            p.expire(_key(token), self.ttl)
            await p.execute()
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
        return Session(d["uid"], d["csrf"], d.get("key", ""), d.get("login", ""))

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
