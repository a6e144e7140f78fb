"""Re-attaching to a streamed task (GET /v1/tasks/{id}/stream) is free, so open relays are
capped per task and per account (429, Retry-After, OpenAI's shape), and relays of one task share
one blocking Redis read per ingress process instead of each holding a connection."""

from __future__ import annotations

import asyncio
import gc
import weakref
from collections.abc import AsyncGenerator, AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any, cast
from uuid import uuid4

import httpx
import pytest
from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError

from ingress.v1.feed import feeds
from jobs.settings import get_settings
from tests.fixtures.accounts import Account

SLOW = {"model": "chunks-30-delay-1000", "messages": [{"role": "user", "content": "slow"}], "stream": True}


async def streamed_task(c: httpx.AsyncClient, gateway: str) -> str:
    r = await c.post(f"{gateway}/v1/chat/completions", headers={"Prefer": "respond-async"}, json=SLOW)
    assert r.status_code == 202, r.text
    return str(r.json()["stream"]).replace("http://gateway.test", gateway)


@asynccontextmanager
async def relay(c: httpx.AsyncClient, url: str) -> AsyncIterator[httpx.Response]:
    """An open relay once its first bytes arrived (or its refusal, read to the end)."""
    async with c.stream("GET", url) as s:
        if s.status_code == 200:
            # httpx types aiter_raw as an iterator; it is an async generator, closed here at once.
            chunks = cast(AsyncGenerator[bytes, None], s.aiter_raw())
            await anext(chunks)
            yield s
            await chunks.aclose()
        else:
            await s.aread()
            yield s


async def test_relays_of_one_task_are_capped(gateway: str, funded: Account, chat_worker: Any) -> None:
    cap = get_settings().v1_stream_relays_per_task
    async with httpx.AsyncClient(timeout=60, headers=funded.headers) as c, AsyncExitStack() as open_:
        url = await streamed_task(c, gateway)
        held = [await open_.enter_async_context(relay(c, url)) for _ in range(cap)]
        assert [s.status_code for s in held] == [200] * cap
        async with relay(c, url) as extra:
            assert extra.status_code == 429 and extra.headers["retry-after"] == "5"
            err = extra.json()["error"]
            assert err["type"] and "open streams" in err["message"]
        # Closing one gives its slot back.
        await held[0].aclose()
        for _ in range(100):
            async with relay(c, url) as again:
                if again.status_code == 200:
                    break
            await asyncio.sleep(0.05)
        assert again.status_code == 200


async def test_relays_of_one_account_are_capped(gateway: str, funded: Account, chat_worker: Any) -> None:
    s = get_settings()
    per_task, per_account = s.v1_stream_relays_per_task, s.v1_stream_relays_per_account
    async with httpx.AsyncClient(timeout=60, headers=funded.headers,
                                 limits=httpx.Limits(max_connections=200)) as c, AsyncExitStack() as open_:
        urls = [await streamed_task(c, gateway) for _ in range(-(-per_account // per_task) + 1)]
        wanted = [urls[i // per_task] for i in range(per_account)]
        held = await asyncio.gather(*(open_.enter_async_context(relay(c, u)) for u in wanted))
        assert [r.status_code for r in held] == [200] * per_account
        async with relay(c, urls[-1]) as extra:  # a task with no relay yet: the account's cap
            assert extra.status_code == 429, extra.text


async def test_relays_of_one_task_share_one_blocking_read(gateway: str, funded: Account, chat_worker: Any,
                                                          app: Any) -> None:
    redis = app.state.sn.redis  # the same Redis server as the gateway's

    async def blocked() -> list[int]:
        """Clients blocked in Redis, sampled over a second (a relay re-blocks after each chunk)."""
        seen = []
        for _ in range(10):
            seen.append(int((await redis.info("clients"))["blocked_clients"]))
            await asyncio.sleep(0.1)
        return seen

    cap = get_settings().v1_stream_relays_per_task
    async with httpx.AsyncClient(timeout=60, headers=funded.headers) as c, AsyncExitStack() as open_:
        url = await streamed_task(c, gateway)
        first = await open_.enter_async_context(relay(c, url))
        one = await blocked()
        more = [await open_.enter_async_context(relay(c, url)) for _ in range(cap - 1)]
        assert [s.status_code for s in [first, *more]] == [200] * cap
        many = await blocked()
    assert max(many) <= max(one), (one, many)


async def test_the_ingress_redis_pool_is_bounded_and_sync_calls_wait_for_it(
        funded: Account, chat_worker: Any) -> None:
    """Each waiting sync call holds a connection (BLPOP): with a pool of 4, ten at once take turns
    instead of opening ten connections, and all of them are answered."""
    from ingress.app import create_app
    from tests.fixtures.v1 import GatewayThread

    app = create_app(get_settings().model_copy(update={"redis_max_connections": 4,
                                                       "redis_pool_timeout_seconds": 30.0}))
    with GatewayThread(app) as server:
        async with httpx.AsyncClient(timeout=60, headers=funded.headers) as c:
            rs = await asyncio.gather(*(c.post(f"{server.url}/chat-completion", json={
                "model": "slow-0.5", "prompt": f"turn {i}"}) for i in range(10)))
        pool = app.state.sn.redis.connection_pool
        made = len(pool._available_connections) + len(pool._in_use_connections)
    assert [r.status_code for r in rs] == [200] * 10, rs[0].text
    assert made <= 4


async def test_the_ingress_stops_its_feed_readers_when_it_shuts_down() -> None:
    """A relay still open at shutdown (uvicorn cancels it only after its grace) must not leave its
    feed's reader blocked on a Redis client the lifespan closed: redis-py reconnects on the next
    command, so the reader would hold a connection past the shutdown, then die with the loop."""
    from ingress.app import create_app

    app = create_app(get_settings())
    async with AsyncExitStack() as relays:
        async with app.router.lifespan_context(app):
            feed = await relays.enter_async_context(feeds(app.state.sn.redis).watching(f"feed-test:{uuid4()}"))
            assert feed.task is not None
            await asyncio.sleep(0.2)  # blocked in its XREAD
        assert feed.task.done() and feed.task.cancelled()


async def test_a_feed_reader_ends_when_its_client_closes_as_its_last_relay_goes() -> None:
    """The client closing under the reader as its last relay leaves (as at shutdown) can swallow
    the reader's cancellation inside redis-py; the reader must still end instead of blocking on
    Redis forever. The race is timing-dependent, so it is run 20 times (it hits 1 in 3 or 4)."""
    s, readers = get_settings(), []
    for i in range(20):
        # As the ingress's client: the read timeout is what lets redis-py lose the cancellation.
        redis = Redis.from_url(s.redis_url or "", socket_timeout=s.sync_timeout_seconds + 10,
                               retry=Retry(NoBackoff(), 1), retry_on_error=[RedisConnectionError])
        async with feeds(redis).watching(f"feed-test:{uuid4()}") as feed:
            await asyncio.sleep(0.05)  # blocked in its XREAD
            closing = asyncio.create_task(redis.aclose())
            await asyncio.sleep(i % 5 / 1000)
        await closing
        readers.append((feed.task, redis))
    done, running = await asyncio.wait([t for t, _ in readers if t is not None], timeout=3)
    for _, redis in readers:
        await redis.aclose()  # what a reader that lost its cancellation reconnected before it ended
    assert not running, running
    assert len(done) == 20


async def test_a_feed_reader_that_dies_is_logged_not_left_unretrieved(
        caplog: pytest.LogCaptureFixture) -> None:
    """The reader ends only by cancellation; an error nobody foresaw (here: a client that decodes
    replies, so ids are str) is logged as the reader's death, not by asyncio's "Task exception was
    never retrieved" when the task is collected, and its relay reads for itself."""
    key = f"feed-test:{uuid4()}"
    loop = asyncio.get_running_loop()
    unhandled: list[str] = []
    before = loop.get_exception_handler()
    loop.set_exception_handler(lambda _loop, context: unhandled.append(str(context["message"])))
    try:
        async with Redis.from_url(get_settings().redis_url or "", decode_responses=True) as redis:
            await redis.xadd(key, {"d": "x"})
            async with feeds(redis).watching(key) as feed:
                assert feed.task is not None
                await asyncio.wait([feed.task], timeout=5)
                assert feed.task.done() and feed.after("0") is None  # the relay reads for itself
            del feed
            gc.collect()
            await redis.delete(key)
    finally:
        loop.set_exception_handler(before)
    assert unhandled == []
    assert [r.getMessage() for r in caplog.records if r.name == "syncnode.ingress"] == [
        f"feed {key}: reader died; its relays read for themselves"]


async def test_the_feeds_of_a_client_go_with_the_client() -> None:
    """Feeds are kept per Redis client (per app); an app that is gone, with its client, must not
    leave its entry, and with it the client, behind for the life of the process."""
    redis = Redis.from_url(get_settings().redis_url or "")
    async with feeds(redis).watching(f"feed-test:{uuid4()}") as feed:
        assert feed.task is not None
        await asyncio.sleep(0.05)  # blocked in its XREAD
    await asyncio.wait([feed.task], timeout=3)
    await feeds(redis).close()
    await redis.aclose()
    gone = weakref.ref(redis)
    del redis, feed
    gc.collect()
    assert gone() is None


async def test_a_feed_reader_whose_client_is_gone_ends() -> None:
    """A reader holds its client only for a read in flight; with the client gone (its app gone) a
    reader ends at once instead of failing a read every half second for the life of the process."""
    redis = Redis.from_url(get_settings().redis_url or "")
    left = feeds(redis)
    await redis.aclose()
    del redis
    gc.collect()
    async with left.watching(f"feed-test:{uuid4()}") as feed:
        assert feed.task is not None
        done, _ = await asyncio.wait([feed.task], timeout=2)
        assert done and not feed.task.cancelled() and feed.task.exception() is None
