"""The provider retry loop, against httpx.MockTransport (no network)."""

from __future__ import annotations

import httpx
import pytest

from jobs.settings import Settings
from workers.providers import chat
from workers.providers.errors import ProviderRejected, ProviderRetryable
from workers.providers.http import call, make_client, retry_after_seconds
from workers.providers.retry import RetryPolicy


def client_for(responses: list[httpx.Response | Exception]) -> tuple[httpx.AsyncClient, list[httpx.Request]]:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        r = responses[min(len(seen), len(responses)) - 1]
        if isinstance(r, Exception):
            raise r
        return r

    c = make_client("https://openrouter.test/api/v1", connect_timeout=1, read_timeout=1,
                    transport=httpx.MockTransport(handler))
    return c, seen


OK = httpx.Response(200, json={"choices": [{"message": {"content": "hi"}}]})


async def run(c: httpx.AsyncClient, retries: int = 3, cap: float = 5) -> object:
    return await call("OpenRouter", lambda: chat.complete(c, "OpenRouter", "k", {"model": "m"}),
                      RetryPolicy(max_retries=retries, retry_after_cap=cap))


async def test_connect_errors_and_5xx_are_retried() -> None:
    c, seen = client_for([httpx.ConnectError("refused"), httpx.Response(503, json={"error": {"message": "x"}}),
                          OK])
    assert await run(c) == OK.json()
    assert len(seen) == 3
    assert seen[0].headers["authorization"] == "Bearer k"


async def test_retries_are_bounded() -> None:
    c, seen = client_for([httpx.ReadTimeout("slow")])
    with pytest.raises(ProviderRetryable):
        await run(c, retries=2)
    assert len(seen) == 3


async def test_4xx_is_not_retried_and_keeps_the_providers_message() -> None:
    c, seen = client_for([httpx.Response(401, json={"error": {"message": "No auth credentials found",
                                                              "code": 401}})])
    with pytest.raises(ProviderRejected) as e:
        await run(c)
    assert len(seen) == 1 and "No auth credentials found" in str(e.value) and e.value.status == 401


async def test_insufficient_quota_429_is_not_retried() -> None:
    c, seen = client_for([httpx.Response(429, json={"error": {"message": "You exceeded your current quota",
                                                              "type": "insufficient_quota"}})])
    with pytest.raises(ProviderRejected):
        await run(c)
    assert len(seen) == 1


async def test_retry_after_longer_than_the_cap_gives_up_at_once() -> None:
    c, seen = client_for([httpx.Response(429, headers={"Retry-After": "60"}, json={"error": {"message": "x"}})])
    with pytest.raises(ProviderRetryable):
        await run(c, cap=5)
    assert len(seen) == 1


def test_retry_after_parsing() -> None:
    assert retry_after_seconds(httpx.Response(429, headers={"Retry-After": "2.5"})) == 2.5
    assert retry_after_seconds(httpx.Response(429, headers={"Retry-After": "junk"})) is None
    assert retry_after_seconds(httpx.Response(429)) is None


async def test_cookies_from_one_call_never_reach_the_next() -> None:
    c, seen = client_for([httpx.Response(200, headers={"Set-Cookie": "session=user-a"},
                                         json={"choices": [{"message": {"content": "hi"}}]})])
    await run(c)
    await run(c)
    assert len(seen) == 2 and "cookie" not in seen[1].headers


def test_the_retry_policy_is_read_from_settings_in_one_place() -> None:
    s = Settings(provider_max_retries=2, provider_retry_after_cap_seconds=20, chat_job_timeout_seconds=300,
                 provider_read_timeout=120)
    assert RetryPolicy.provider(s) == RetryPolicy(max_retries=2, retry_after_cap=20.0)
    # A chat call leaves its last try a whole read timeout (and 10 s) inside the job's timeout.
    assert RetryPolicy.chat(s) == RetryPolicy(max_retries=2, retry_after_cap=20.0, budget=170.0)
    assert RetryPolicy.provider(s).retries(0).longest_call(10) == 10
    # Between tries call() waits a backoff of at most 8 s, or a Retry-After up to the cap.
    assert RetryPolicy(max_retries=2, retry_after_cap=5).longest_call(10) == 3 * 10 + 2 * 8
    assert RetryPolicy(max_retries=2, retry_after_cap=20).longest_call(10) == 3 * 10 + 2 * 20
