"""Inputs and failures that must hurt nobody else: NUL bytes, lost Lua scripts, bad batches,
mismatched token algorithms, provider cookies."""

from __future__ import annotations

import asyncio
import functools
import time
import uuid
from typing import Any

import httpx
import jwt
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from jobs.batch import Combiner
from tests.fixtures.accounts import Account, audit
from tests.fixtures.servers import ServerThread
from tests.helpers import CHAT
from workers.providers import chat
from workers.providers.http import call, make_client
from workers.providers.retry import RetryPolicy


async def test_nul_in_a_request_is_400_naming_the_field(client: httpx.AsyncClient, funded: Account,
                                                       app: Any) -> None:
    r = await client.post(CHAT, headers=funded.headers,
                          json={"model": "m", "messages": [{"role": "user", "content": "a\u0000b"}]})
    assert r.status_code == 400
    assert r.json()["error"] == "Invalid messages[0].content: contains a NUL character (\\u0000)"
    assert await audit(app, funded.uid) == (5_000_000, 5_000_000)


async def test_nul_neighbour_does_not_fail_a_batch(client: httpx.AsyncClient, funded: Account,
                                                   chat_worker: Any) -> None:
    bodies = [{"model": "m", "prompt": f"fine {i}"} for i in range(6)] + [{"model": "m", "prompt": "x\u0000"}]
    rs = await asyncio.gather(*(client.post(CHAT, headers=funded.headers, json=b) for b in bodies))
    assert [r.status_code for r in rs] == [200] * 6 + [400]


async def test_nul_in_provider_output_is_stored_replaced(client: httpx.AsyncClient, funded: Account,
                                                         chat_worker: Any, app: Any) -> None:
    rs = await asyncio.gather(*(client.post(CHAT, headers=funded.headers, json={"model": model, "prompt": "p"})
                                for model in ["nul-output", "m", "m", "m"]))
    assert [r.status_code for r in rs] == [200] * 4
    content = rs[0].json()["prediction"]["output"]["choices"][0]["message"]["content"]
    assert content == "before\ufffdafter"
    assert await audit(app, funded.uid) == (4_920_000, 4_920_000)


async def test_sync_call_survives_redis_losing_its_scripts(client: httpx.AsyncClient, funded: Account,
                                                           chat_worker: Any, app: Any) -> None:
    r = await client.post(CHAT, headers=funded.headers, json={"model": "m", "prompt": "before a flush"})
    assert r.status_code == 200
    await app.state.sn.redis.script_flush()  # what a Redis restart or failover does to scripts
    started = time.monotonic()
    r = await client.post(CHAT, headers=funded.headers, json={"model": "m", "prompt": "after a flush"})
    assert r.status_code == 200, r.text
    assert time.monotonic() - started < 3
    await app.state.sn.redis.script_flush()
    r = await client.post(CHAT, headers={**funded.headers, "Prefer": "respond-async"},
                          json={"model": "m", "prompt": "async after a flush"})
    assert r.status_code == 202


async def test_token_whose_alg_does_not_match_its_key_is_401(client: httpx.AsyncClient,
                                                             jwt_keys: dict[str, Any]) -> None:
    from cryptography.hazmat.primitives.asymmetric import rsa

    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    token = jwt.encode({"sub": "u", "aud": "authenticated", "exp": int(time.time()) + 60}, rsa_key,
                       algorithm="RS256", headers={"kid": jwt_keys["kid"]})
    r = await client.get("/balance", headers={"Authorization": f"Bearer {token}"})
    assert r.status_code == 401 and "algorithm" in r.json()["error"]


async def test_admin_token_with_a_non_ascii_byte_is_403(client: httpx.AsyncClient) -> None:
    r = await client.post("/accounts", headers=[(b"Authorization", "Bearer t\u00e9st".encode("latin-1"))])
    assert r.status_code == 403


async def test_combiner_runs_neighbours_of_a_bad_item_alone() -> None:
    batches: list[list[int]] = []

    async def run(_: str, items: list[int]) -> list[int]:
        batches.append(items)
        await asyncio.sleep(0.01)
        if 13 in items:
            raise ValueError("unlucky")
        return [i * 2 for i in items]

    c: Combiner[str, int, int] = Combiner(run)
    results = await asyncio.gather(*(c.submit("k", i) for i in (1, 13, 2, 3)), return_exceptions=True)
    assert results[0] == 2 and isinstance(results[1], ValueError) and results[2:] == [4, 6]
    assert any(len(b) > 1 for b in batches)  # they did share a batch first


async def test_provider_cookies_never_cross_accounts() -> None:
    seen: list[str | None] = []

    async def handler(request: Request) -> JSONResponse:
        seen.append(request.headers.get("cookie"))
        return JSONResponse({"choices": [{"message": {"content": "ok"}}]},
                            headers={"Set-Cookie": "sess=user-a-secret; Path=/"})

    server = ServerThread(Starlette(routes=[Route("/chat/completions", handler, methods=["POST"])]))
    server.start()
    try:
        # A hostname, not an IP: aiohttp's real jar ignores cookies set by IP hosts.
        c = make_client(f"http://localhost:{server.port}", connect_timeout=2, read_timeout=5)
        for key in ("user-a", "user-b"):
            await call("OpenRouter", functools.partial(chat.complete, c, "OpenRouter", key, {"model": "m"}),
                       RetryPolicy(max_retries=0, retry_after_cap=1))
        await c.aclose()
    finally:
        server.stop()
    assert seen == [None, None]


@pytest.mark.parametrize("budget", [0.3])
async def test_retries_stop_at_the_budget(budget: float) -> None:
    calls = 0

    def handler(request: httpx.Request) -> httpx.Response:
        nonlocal calls
        calls += 1
        return httpx.Response(503, headers={"Retry-After": "0.2"}, json={"error": {"message": "busy"}})

    c = make_client("https://x.test", connect_timeout=1, read_timeout=1, transport=httpx.MockTransport(handler))
    started = time.monotonic()
    with pytest.raises(Exception, match="busy"):
        await call("OpenAI", lambda: chat.complete(c, "OpenAI", "k", {}),
                   RetryPolicy(max_retries=50, retry_after_cap=5, budget=budget))
    assert time.monotonic() - started < budget + 0.3 and calls <= 3
    _ = uuid
