"""One blocking XREAD per task stream per ingress process, however many relays read it.

The feed's one reader blocks on the stream from the entry that was last when it started, keeps
what it reads and wakes the relays (``ingress/v1/relay.py``) waiting on it. A relay at or past
that start takes its entries from the feed; one behind it (a client resuming from an older
``Last-Event-ID``, or from the start) catches up with reads that do not block, so the connection
goes straight back to the pool. So 150 clients of one task hold one blocked Redis connection
between them, not 150. The reader stops when its last relay goes, or when the ingress shuts down
(``close``, before its Redis client closes: a closed redis-py client reconnects on the next
command, so a reader left running would keep a connection open past the shutdown). It is
cancelled, and also checks between reads that it is still wanted: redis-py can swallow a
cancellation that lands while a connection is being closed (redis/redis-py#2028), and such a
reader would otherwise block on Redis forever.
"""

from __future__ import annotations

import asyncio
import bisect
import logging
import weakref
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress

from redis.asyncio import Redis
from redis.exceptions import RedisError

log = logging.getLogger("syncnode.ingress")
_BLOCK_MS = 1000
Entry = tuple[str, dict[bytes, bytes]]


def entry_key(entry_id: str) -> tuple[int, ...]:
    """Stream ids order as (milliseconds, sequence); a bare "0" sorts before every entry."""
    return tuple(int(p) for p in entry_id.split("-"))


class Feed:
    """What a relay waits on: ``changed`` is replaced (after being set) whenever entries arrive,
    so a relay takes it before its own read and misses nothing that lands in between."""

    def __init__(self) -> None:
        self.users = 0
        self.changed = asyncio.Event()
        self.task: asyncio.Task[None] | None = None
        self.start: tuple[int, ...] | None = None  # the reader's first position, once it has one
        self.entries: list[Entry] = []
        self.ids: list[tuple[int, ...]] = []

    def after(self, last_id: str) -> list[Entry] | None:
        """The kept entries after ``last_id``; None when it is behind what the feed kept (or the
        reader died of something unforeseen: the relay then reads for itself)."""
        last = entry_key(last_id)
        if self.start is None or last < self.start or (self.task is not None and self.task.done()):
            return None
        return self.entries[bisect.bisect_right(self.ids, last):]

    def add(self, entries: list[Entry]) -> None:
        self.entries.extend(entries)
        self.ids.extend(entry_key(e[0]) for e in entries)
        self.wake()

    def wake(self) -> None:
        woken, self.changed = self.changed, asyncio.Event()
        woken.set()

    async def wait(self, event: asyncio.Event, timeout: float) -> None:
        with suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                await event.wait()


class Feeds:
    """The feeds of one Redis client (one ingress process), by stream key."""

    def __init__(self, redis: Redis) -> None:
        # Weak: _BY_CLIENT is keyed by the client, and a value holding its key strongly would keep
        # every app's entry, and its client, for the life of the process.
        self._redis = weakref.ref(redis)
        self.feeds: dict[str, Feed] = {}
        self.closed = False

    @asynccontextmanager
    async def watching(self, key: str) -> AsyncIterator[Feed]:
        feed = self.feeds.get(key)
        if feed is None:
            feed = self.feeds[key] = Feed()
            if not self.closed:  # after close a feed has no reader: its relays read for themselves
                feed.task = asyncio.create_task(self._run(key, feed), name=f"feed {key}")
                feed.task.add_done_callback(_reader_ended)
        feed.users += 1
        try:
            yield feed
        finally:
            feed.users -= 1
            if feed.users == 0 and self.feeds.get(key) is feed:
                del self.feeds[key]
                if feed.task is not None:
                    feed.task.cancel()

    async def close(self) -> None:
        """Stop every reader and wait for them, so none outlives the client."""
        self.closed = True
        tasks = [f.task for f in self.feeds.values() if f.task is not None]
        for t in tasks:
            t.cancel()
        if tasks:  # bounded: a reader that swallowed its cancellation notices at its next read
            await asyncio.wait(tasks, timeout=_BLOCK_MS / 1000 + 2)

    async def _run(self, key: str, feed: Feed) -> None:
        top = await self._read(key, None)
        last = top[0][0] if top else "0-0"
        feed.start = entry_key(last)
        while self.feeds.get(key) is feed and not self.closed:
            try:
                got = await self._read(key, last)
            except RedisError:
                log.warning("feed of %s: Redis read failed; relays fall back to their own reads", key,
                            exc_info=True)
                feed.wake()
                await asyncio.sleep(0.5)
                continue
            if got is None:  # the app, and its client, are gone: nobody is left to read for
                return
            if got:
                last = got[-1][0]
                feed.add(got)

    async def _read(self, key: str, last: str | None) -> list[Entry] | None:
        """Entries after ``last`` (blocking), or the last entry when ``last`` is None (an error
        reads as none then); None when the client is gone. The client is held only for the read."""
        redis = self._redis()
        if redis is None:
            return None
        if last is None:
            with suppress(RedisError):
                return [(eid.decode(), fields) for eid, fields in await redis.xrevrange(key, count=1)]
            return []
        res = await redis.xread({key: last}, count=512, block=_BLOCK_MS)
        return [(eid.decode(), fields) for eid, fields in res[0][1]] if res else []


def _reader_ended(task: asyncio.Task[None]) -> None:
    """A reader ends when it is no longer wanted; an error is logged here (its relays have fallen
    back to their own reads), instead of asyncio's "Task exception was never retrieved" at GC."""
    if not task.cancelled() and (exc := task.exception()) is not None:
        log.error("%s: reader died; its relays read for themselves", task.get_name(), exc_info=exc)


_BY_CLIENT: weakref.WeakKeyDictionary[Redis, Feeds] = weakref.WeakKeyDictionary()


def feeds(redis: Redis) -> Feeds:
    """This process's feeds on ``redis`` (the app's one client)."""
    got = _BY_CLIENT.get(redis)
    if got is None:
        got = _BY_CLIENT[redis] = Feeds(redis)
    return got


async def close(redis: Redis) -> None:
    """At shutdown, before ``redis`` closes: stop this process's readers on it."""
    await feeds(redis).close()  # kept, closed: a relay still arriving gets a feed without a reader
