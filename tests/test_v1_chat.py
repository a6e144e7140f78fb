"""POST /v1/chat/completions driven by the official OpenAI SDK against a real server: shapes
passed through, the routing rule, and errors the SDK turns into its own exception classes."""

from __future__ import annotations

import time
import uuid
from typing import Any

import httpx
import openai
import pytest

from tests.fakes import chat_provider
from tests.fixtures.accounts import Account, MakeAccount, audit
from tests.fixtures.v1 import OpenAIClient, worker_settings


def sent(prompt: str) -> list[dict[str, Any]]:
    return chat_provider.calls_with_prompt(prompt)


def user(prompt: str) -> list[Any]:
    return [{"role": "user", "content": prompt}]


async def test_a_completion_through_the_sdk(oai: OpenAIClient, funded: Account, chat_worker: Any,
                                            app: Any) -> None:
    prompt = f"hello {uuid.uuid4()}"
    r = await oai(funded).chat.completions.create(model="openai/gpt-4o", messages=user(prompt), max_tokens=50)
    assert r.choices[0].message.content == f"echo: {prompt}"
    assert r.id == "gen-1732550000-abc" and r.usage is not None and r.usage.total_tokens == 110
    assert sent(prompt)[0]["auth"] == "Bearer sk-or-v1-test-key-0001"  # vendor/model → OpenRouter
    assert await audit(app, funded.uid) == (4_980_000, 4_980_000)


async def test_request_fields_pass_through_untouched(oai: OpenAIClient, funded: Account, chat_worker: Any) -> None:
    prompt = f"weather {uuid.uuid4()}"
    tools = [{"type": "function", "function": {"name": "get_weather", "description": "Weather in a city",
                                               "parameters": {"type": "object",
                                                              "properties": {"city": {"type": "string"}}}}}]
    r = await oai(funded).chat.completions.create(
        model="tool-call", messages=user(prompt), tools=tools, tool_choice="auto", seed=7, stop=["\n\n"], n=1,
        logprobs=True, top_logprobs=2, response_format={"type": "json_object"},
        extra_body={"transforms": ["middle-out"], "provider": {"order": ["Fake"]}})
    call = r.choices[0].message.tool_calls[0]
    assert (call.function.name, call.function.arguments) == ("get_weather", '{"city": "Paris"}')
    assert r.choices[0].finish_reason == "tool_calls"
    body = sent(prompt)[0]["body"]
    assert body["tools"] == tools and body["tool_choice"] == "auto" and body["seed"] == 7
    assert body["stop"] == ["\n\n"] and body["n"] == 1 and body["logprobs"] is True and body["top_logprobs"] == 2
    assert body["response_format"] == {"type": "json_object"}
    assert body["transforms"] == ["middle-out"] and body["provider"] == {"order": ["Fake"]}  # unknown fields kept
    assert "stream" not in body


async def test_routing_rule(oai: OpenAIClient, make_account: MakeAccount, chat_worker: Any) -> None:
    both = await make_account(keys={"openrouter_key": "sk-or-v1-both", "chatgpt_key": "sk-both"})
    only_or = await make_account(keys={"openrouter_key": "sk-or-v1-only"})
    only_oa = await make_account(keys={"chatgpt_key": "sk-only"})
    p1, p2 = f"direct {uuid.uuid4()}", f"via openrouter {uuid.uuid4()}"
    await oai(both).chat.completions.create(model="gpt-4o-mini", messages=user(p1))
    assert sent(p1)[0]["auth"] == "Bearer sk-both" and sent(p1)[0]["body"]["model"] == "gpt-4o-mini"
    await oai(only_or).chat.completions.create(model="gpt-4o-mini", messages=user(p2))
    assert sent(p2)[0]["auth"] == "Bearer sk-or-v1-only" and sent(p2)[0]["body"]["model"] == "openai/gpt-4o-mini"
    with pytest.raises(openai.BadRequestError) as e:
        await oai(only_oa).chat.completions.create(model="anthropic/claude-3.5-sonnet", messages=user("x"))
    assert "openrouter_key" in e.value.message
    with pytest.raises(openai.BadRequestError) as e:
        await oai(await make_account()).chat.completions.create(model="gpt-4o-mini", messages=user("x"))
    assert "chatgpt_key" in e.value.message and "openrouter_key" in e.value.message


async def test_bad_api_key_is_authentication_error_in_openai_shape(oai: OpenAIClient, gateway: str) -> None:
    with pytest.raises(openai.AuthenticationError) as e:
        await oai(api_key="sn_not-a-key").chat.completions.create(model="m", messages=user("x"))
    assert e.value.status_code == 401
    async with httpx.AsyncClient() as c:
        r = await c.post(f"{gateway}/v1/chat/completions", json={"model": "m", "messages": user("x")})
    assert r.status_code == 401
    assert set(r.json()["error"]) >= {"message", "type", "code"}
    assert r.json()["error"]["type"] == "authentication_error"


async def test_short_balance_is_402_insufficient_quota(oai: OpenAIClient, make_account: MakeAccount,
                                                       app: Any) -> None:
    broke = await make_account(balance="0.01", keys={"openrouter_key": "sk-or-v1-broke"})
    with pytest.raises(openai.APIStatusError) as e:
        await oai(broke).chat.completions.create(model="openai/gpt-4o", messages=user("x"))
    assert e.value.status_code == 402
    assert isinstance(e.value.body, dict) and e.value.body["code"] == "insufficient_quota"
    assert await audit(app, broke.uid) == (10_000, 10_000)


async def test_provider_rate_limit_is_429_with_retry_after_and_the_sdk_retries(
        oai: OpenAIClient, funded: Account, chat_worker: Any, app: Any) -> None:
    with worker_settings(chat_worker, provider_max_retries=0):
        with pytest.raises(openai.RateLimitError) as e:
            await oai(funded, max_retries=0).chat.completions.create(
                model="limited-1", messages=user(f"no retry {uuid.uuid4()}"))
        assert e.value.response.headers["retry-after"] == "1"
        prompt = f"retried {uuid.uuid4()}"
        t0 = time.monotonic()
        r = await oai(funded, max_retries=2).chat.completions.create(model="limited-1", messages=user(prompt))
        waited = time.monotonic() - t0
    assert r.choices[0].message.content == f"echo: {prompt}"
    assert len(sent(prompt)) == 2 and waited >= 1.0  # the SDK waited out the Retry-After we passed on
    # Three tasks; the two refused by the provider were refunded: one charge stands.
    assert await audit(app, funded.uid) == (4_980_000, 4_980_000)


async def test_provider_failures_map_to_sdk_errors_and_are_refunded(
        oai: OpenAIClient, funded: Account, chat_worker: Any, app: Any) -> None:
    client = oai(funded, max_retries=0)
    with worker_settings(chat_worker, provider_max_retries=0):
        with pytest.raises(openai.BadRequestError) as e:
            await client.chat.completions.create(model="reject-400", messages=user("x"))
        assert "invalid model ID" in e.value.message
        with pytest.raises(openai.InternalServerError) as e5:
            await client.chat.completions.create(model="fail-500", messages=user("x"))
        assert e5.value.status_code == 502
    assert await audit(app, funded.uid) == (5_000_000, 5_000_000)


async def test_bad_requests_and_unknown_routes_answer_in_openai_shape(oai: OpenAIClient, funded: Account,
                                                                      gateway: str) -> None:
    with pytest.raises(openai.BadRequestError) as e:
        await oai(funded).chat.completions.create(model="m", messages=[])
    assert "messages" in e.value.message and e.value.param == "messages"
    with pytest.raises(openai.BadRequestError) as e:
        await oai(funded).chat.completions.create(model="m", messages=[{"role": "user", "content": "x"}],
                                                  n=99)
    assert e.value.param == "n"
    with pytest.raises(openai.NotFoundError):
        await oai(funded).files.list()
    async with httpx.AsyncClient() as c:
        r = await c.post(f"{gateway}/v1/chat/completions", headers=funded.headers, content=b"{not json")
    assert r.status_code == 400 and r.json()["error"]["type"] == "invalid_request_error"


async def test_idempotency_key_replays_and_conflicts_as_the_sdk_expects(
        oai: OpenAIClient, funded: Account, chat_worker: Any, app: Any) -> None:
    client = oai(funded, max_retries=0)
    key = {"Idempotency-Key": f"k-{uuid.uuid4()}"}
    prompt = f"once {uuid.uuid4()}"
    a = await client.chat.completions.create(model="m", messages=user(prompt), extra_headers=key)
    b = await client.chat.completions.create(model="m", messages=user(prompt), extra_headers=key)
    assert a.choices[0].message.content == b.choices[0].message.content == f"echo: {prompt}"
    with pytest.raises(openai.ConflictError) as e:
        await client.chat.completions.create(model="m", messages=user("another body"), extra_headers=key)
    assert e.value.status_code == 409
    # A streamed request replayed with its key: the same task's stream again, paid once.
    skey = {"Idempotency-Key": f"s-{uuid.uuid4()}"}
    first = await client.chat.completions.create(model="chunks-3", messages=user(prompt), stream=True,
                                                 extra_headers=skey)
    one = [c.choices[0].delta.content async for c in first]
    again = await client.chat.completions.create(model="chunks-3", messages=user(prompt), stream=True,
                                                 extra_headers=skey)
    two = [c.choices[0].delta.content async for c in again]
    assert one == two == ["w0 ", "w1 ", "w2 "]
    assert first.response.headers["x-syncnode-job-id"] == again.response.headers["x-syncnode-job-id"]
    assert len(sent(prompt)) == 2  # one whole completion, one stream
    assert await audit(app, funded.uid) == (4_960_000, 4_960_000)


async def test_a_loopback_webhook_is_refused_before_the_charge(oai: OpenAIClient, funded: Account,
                                                               app: Any) -> None:
    prompt = f"hooked {uuid.uuid4()}"
    with pytest.raises(openai.BadRequestError) as e:
        await oai(funded).chat.completions.create(model="m", messages=user(prompt),
                                                  extra_body={"webhook": "http://127.0.0.1:9/hook"})
    assert "webhook" in e.value.message.lower()
    assert sent(prompt) == []
    assert await audit(app, funded.uid) == (5_000_000, 5_000_000)


async def test_a_sync_timeout_points_a_whole_completion_at_its_task_not_at_a_stream(
        app: Any, funded: Account, chat_worker: Any) -> None:
    # The 504 named /v1/tasks/{id}/stream for every task; a task that was not streamed has none (404).
    from ingress.app import create_app

    slow_app = create_app(app.state.sn.settings.model_copy(update={"sync_timeout_seconds": 0.3}))
    async with slow_app.router.lifespan_context(slow_app), httpx.AsyncClient(
            transport=httpx.ASGITransport(app=slow_app), base_url="http://gateway.test",
            headers=funded.headers) as c:
        r = await c.post("/v1/chat/completions", json={"model": "slow-1", "messages": user("takes a while")})
        assert r.status_code == 504 and r.headers["x-should-retry"] == "false"
        error = r.json()["error"]
        task_id, message = error["task_id"], error["message"]
        assert f"GET /tasks/{task_id}" in message and "/stream" not in message, message
        stream = await c.get(f"/v1/tasks/{task_id}/stream")
        assert stream.status_code == 404
