"""A Redis that takes connections and then answers nothing (a stopped process, a partition) is a
503 within the ingress's read timeout, and costs nothing: not a request held for the sync timeout
and more (the client's read timeout was the sync timeout + 10 s, 70 s by default)."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from ingress.app import create_app
from jobs.settings import get_settings
from storage.embedded import EmbeddedRedis
from tests.fixtures.accounts import Account, audit
from tests.helpers import CHAT

READ_TIMEOUT = 2.0


@pytest.fixture
async def hung(tmp_path: Path) -> AsyncIterator[tuple[Any, EmbeddedRedis]]:
    """An ingress on a Redis of its own, started, and that Redis stopped (SIGSTOP) once it is up."""
    redis = EmbeddedRedis(tmp_path / "redis", persist=False)
    url = redis.start()
    settings = get_settings().model_copy(update={"redis_url": url, "redis_read_timeout_seconds": READ_TIMEOUT})
    app = create_app(settings)
    try:
        async with app.router.lifespan_context(app):
            assert redis.proc is not None
            os.kill(redis.proc.pid, signal.SIGSTOP)
            try:
                yield app, redis
            finally:
                os.kill(redis.proc.pid, signal.SIGCONT)
    finally:
        redis.stop()


@pytest.mark.parametrize("headers", [{}, {"Prefer": "respond-async"}], ids=["sync", "fire-and-poll"])
async def test_a_hung_redis_is_a_503_within_the_read_timeout_and_costs_nothing(
        hung: tuple[Any, EmbeddedRedis], funded: Account, app: Any, headers: dict[str, str]) -> None:
    ingress, _ = hung
    transport = httpx.ASGITransport(app=ingress)
    async with httpx.AsyncClient(transport=transport, base_url="http://test", timeout=60) as c:
        t0 = time.monotonic()
        r = await c.post(CHAT, headers={**funded.headers, **headers}, json={"model": "m", "prompt": "hung"})
        took = time.monotonic() - t0
    assert r.status_code == 503, r.text
    assert r.headers["retry-after"] == "1"
    # One read timeout for the command that hung (two if the credential's lookup went to Redis
    # first), plus the charge's undo: seconds, not the 70 s of the sync timeout + 10.
    assert took < 3 * READ_TIMEOUT + 2, took
    assert await audit(app, funded.uid) == (5_000_000, 5_000_000)
