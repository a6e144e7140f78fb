"""Real Postgres and Redis (started here on free ports), a fake chat provider, the app.

Servers start in ``pytest_configure`` so that the environment (DATABASE_URL, REDIS_URL, the
provider base URLs) is set before any test module imports the settings.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.fixtures.servers import JWT_SECRET, JwksServer, ServerThread, start_stack

_STACK: dict[str, Any] = {}


def pytest_configure(config: pytest.Config) -> None:
    tmp = Path(tempfile.mkdtemp(prefix="syncnode-test-"))
    pg, rd = start_stack(tmp)
    from tests.fakes.chat_provider import app as chat_fake

    chat = ServerThread(chat_fake)
    chat.start()
    jwks = JwksServer()
    jwks.start()
    os.environ.update({
        "DATABASE_URL": pg.dsn, "REDIS_URL": rd.url, "SYNCNODE_DATA_DIR": str(tmp / "data"),
        "SYNCNODE_MASTER_KEY": "test-master-key", "SYNCNODE_ADMIN_TOKEN": "test-admin-token",
        "SYNCNODE_OPENROUTER_BASE_URL": chat.url, "SYNCNODE_OPENAI_BASE_URL": chat.url + "/v1",
        "SYNCNODE_JOB_LEASE_SECONDS": "2", "SYNCNODE_SWEEP_AFTER_SECONDS": "1",
        "SYNCNODE_SWEEP_INTERVAL_SECONDS": "1", "SYNCNODE_SYNC_TIMEOUT_SECONDS": "10",
        "SYNCNODE_PUBLIC_URL": "http://gateway.test",
        "SUPABASE_JWT_SECRET": JWT_SECRET, "SUPABASE_JWKS_URL": jwks.url + "/auth/v1/.well-known/jwks.json",
    })
    from tests.fixtures.stripe import start_localstripe

    localstripe, stripe_env = start_localstripe()
    os.environ.update(stripe_env)
    _STACK.update(localstripe=localstripe)
    _STACK.update(tmp=tmp, pg=pg, redis=rd, chat=chat, jwks=jwks,
                  jwt={"secret": JWT_SECRET, "private_key": jwks.private_key, "kid": jwks.kid})
    import asyncio

    from storage.migrate import migrate

    asyncio.run(migrate(pg.dsn))


def pytest_unconfigure(config: pytest.Config) -> None:
    for name in ("chat", "jwks", "localstripe"):
        if name in _STACK:
            _STACK[name].stop()
    for name in ("redis", "pg"):
        if name in _STACK:
            _STACK[name].stop()
    if "tmp" in _STACK:
        shutil.rmtree(_STACK["tmp"], ignore_errors=True)


@pytest.fixture(scope="session")
def stack() -> dict[str, Any]:
    return _STACK


@pytest.fixture(scope="session")
def chat_fake_url() -> str:
    return str(_STACK["chat"].url)


@pytest.fixture(scope="session")
async def app() -> AsyncIterator[Any]:
    from ingress.app import create_app
    from jobs.settings import get_settings

    get_settings.cache_clear()
    application = create_app(get_settings())
    async with application.router.lifespan_context(application):
        yield application


@pytest.fixture
async def client(app: Any) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gateway.test",
                                 timeout=30) as c:
        yield c


pytest_plugins = ["tests.fixtures.accounts", "tests.fixtures.workers", "tests.fixtures.moderation",
                  "tests.fixtures.media", "tests.fixtures.stripe", "tests.fixtures.v1", "tests.fixtures.web"]


@pytest.fixture(scope="session")
def jwt_keys() -> dict[str, Any]:
    return dict(_STACK["jwt"])
