"""Counted slots in Redis: how many of something one account (or one task) has going at once.

A slot is taken with INCR (and a TTL, so a crashed holder cannot leak one forever) and given
back with a script that deletes the counter when it reaches zero, so a counter whose TTL ran
out while its holders still worked can never go negative and outlive them.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from redis.asyncio import Redis

_GIVE_BACK = "local n = redis.call('DECR', KEYS[1]) if n <= 0 then redis.call('DEL', KEYS[1]) end return n"


@asynccontextmanager
async def slot(redis: Redis, key: str, ttl_seconds: float) -> AsyncIterator[int]:
    """Hold one slot of ``key``; yields how many are held now, this one included."""
    async with redis.pipeline(transaction=True) as pipe:
        pipe.incr(key)
        pipe.expire(key, max(1, int(ttl_seconds)))
        count, _ = await pipe.execute()
    try:
        yield int(count)
    finally:
        await redis.eval(_GIVE_BACK, 1, key)
