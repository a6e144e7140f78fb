"""/v1/models, /v1/embeddings and /v1/moderations through the OpenAI SDK."""

from __future__ import annotations

import uuid
from typing import Any

import httpx
import openai
import pytest

from tests.fakes import chat_stream
from tests.fixtures.accounts import Account, MakeAccount, audit
from tests.fixtures.moderation import b64, landscape
from tests.fixtures.v1 import OpenAIClient


async def test_models_are_those_the_stored_keys_reach_and_the_lists_are_cached(
        oai: OpenAIClient, make_account: MakeAccount, app: Any) -> None:
    await app.state.sn.redis.delete("syncnode:models:OpenRouter:all")
    both = await make_account(keys={"openrouter_key": "sk-or-v1-m", "chatgpt_key": f"sk-{uuid.uuid4()}"})
    only_or = await make_account(keys={"openrouter_key": "sk-or-v1-n"})
    before = len(chat_stream.MODELS_CALLS)
    ids = [m.id async for m in oai(both).models.list()]
    assert ids == ["gpt-4o-mini", "text-embedding-3-small", "openai/gpt-4o", "anthropic/claude-3.5-sonnet"]
    page = await oai(only_or).models.list()
    assert [m.id for m in page.data] == ["openai/gpt-4o", "anthropic/claude-3.5-sonnet"]
    assert page.data[1].owned_by == "anthropic" and page.data[1].object == "model"
    assert chat_stream.MODELS_CALLS[before:] == ["openai", "openrouter"]  # the second listing was cached
    nothing = await oai(await make_account()).models.list()
    assert nothing.data == []


async def test_a_model_is_retrieved_by_its_id_slash_included_and_others_are_404(
        oai: OpenAIClient, make_account: MakeAccount) -> None:
    acct = await make_account(keys={"openrouter_key": "sk-or-v1-r"})
    client = oai(acct, max_retries=0)
    m = await client.models.retrieve("anthropic/claude-3.5-sonnet")
    assert (m.id, m.object, m.owned_by) == ("anthropic/claude-3.5-sonnet", "model", "anthropic")
    for missing in ("gpt-4o-mini", "nobody/none", "openai/gpt-4o/extra"):  # the first needs an OpenAI key
        with pytest.raises(openai.NotFoundError) as e:
            await client.models.retrieve(missing)
        assert (e.value.code, e.value.param) == ("model_not_found", "model")
    with pytest.raises(openai.AuthenticationError):
        await oai(api_key="sk-not-ours", max_retries=0).models.retrieve("openai/gpt-4o")


async def test_models_with_a_key_the_provider_refuses_is_400(oai: OpenAIClient, make_account: MakeAccount) -> None:
    # The caller's stored key is theirs to fix (a 502 made the SDK retry, and schemathesis flag a server error).
    acct = await make_account(keys={"chatgpt_key": "not-an-openai-key"})
    with pytest.raises(openai.BadRequestError) as e:
        await oai(acct, max_retries=0).models.list()
    assert "401" in e.value.message and "chatgpt_key" in e.value.message


async def test_embeddings_pass_through_and_are_charged(oai: OpenAIClient, funded: Account, chat_worker: Any,
                                                       app: Any) -> None:
    # The SDK asks for base64 by default and decodes it: both formats pass through.
    r = await oai(funded).embeddings.create(model="text-embedding-3-small", input=["one", "two"])
    assert [d.index for d in r.data] == [0, 1]
    assert r.data[0].embedding == pytest.approx(chat_stream.vector("one"), abs=1e-6)
    f = await oai(funded).embeddings.create(model="openai/text-embedding-3-small", input="three",
                                            encoding_format="float")
    assert f.data[0].embedding == chat_stream.vector("three")
    assert f.model == "openai/text-embedding-3-small"
    assert await audit(app, funded.uid) == (4_960_000, 4_960_000)
    with pytest.raises(openai.BadRequestError):
        await oai(funded).embeddings.create(model="text-embedding-3-small", input=[])


async def test_moderation_local_backend_says_what_it_did_not_score(oai: OpenAIClient, funded: Account,
                                                                    moderation_worker: Any, app: Any) -> None:
    r = await oai(funded).moderations.create(input=["Have a lovely day!", "I will kill you"])
    assert len(r.results) == 2
    res = r.results[0]
    cats = res.categories.model_dump(by_alias=True)
    assert len(cats) == 13 and "self-harm/intent" in cats
    coverage = (res.model_extra or {})["coverage"]["text"]
    # The local text model scores profanity only: OpenAI's categories read 0 and are listed unscored.
    assert "violence" in coverage["unscored"] and r.results[1].category_scores.violence == 0
    assert res.flagged is False and r.results[1].category_applied_input_types.violence == []
    assert await audit(app, funded.uid) == (4_980_000, 4_980_000)  # two inputs at $0.01


async def test_moderation_with_the_openai_backend(oai: OpenAIClient, funded: Account, openai_moderation: str) -> None:
    r = await oai(funded).moderations.create(input="I will kill you")
    res = r.results[0]
    assert res.flagged is True and res.categories.violence is True
    assert res.category_scores.violence == pytest.approx(0.93)
    assert res.category_applied_input_types.violence == ["text"]
    assert "violence" in (res.model_extra or {})["coverage"]["text"]["scored"]


async def test_moderation_multimodal_input(gateway: str, funded: Account, moderation_worker: Any) -> None:
    img = "data:image/png;base64," + b64(landscape())
    async with httpx.AsyncClient(timeout=60, headers=funded.headers) as c:
        r = await c.post(f"{gateway}/v1/moderations", json={"model": "omni-moderation-latest", "input": [
            {"type": "text", "text": "a house on a hill"},
            {"type": "image_url", "image_url": {"url": img}}]})
        bad = await c.post(f"{gateway}/v1/moderations", json={"input": [
            {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}]})
    assert r.status_code == 200, r.text
    res = r.json()["results"]
    assert len(res) == 1 and set(res[0]["coverage"]) == {"text", "image"}
    assert bad.status_code == 400 and bad.json()["error"]["type"] == "invalid_request_error"


async def test_moderation_refuses_a_caller_who_cannot_pay_before_any_image_work(
        gateway: str, make_account: MakeAccount, app: Any) -> None:
    broke = await make_account(balance="0.01")  # one input's price, not two
    async with httpx.AsyncClient(timeout=30, headers=broke.headers) as c:
        r = await c.post(f"{gateway}/v1/moderations", json={"input": ["a", "b"]})
        unauth = await c.post(f"{gateway}/v1/moderations", headers={"Authorization": "Bearer sn_nope"},
                              content=b"x" * 1000)
    assert r.status_code == 402 and r.json()["error"]["code"] == "insufficient_quota"
    assert unauth.status_code == 401  # refused from the headers, the body unread
    assert await audit(app, broke.uid) == (10_000, 10_000)


async def test_moderation_bad_input_says_what_is_wrong_in_openai_terms(gateway: str, funded: Account, app: Any) -> None:
    # Messages used to name a pydantic union branch ("input.constrained-str") or the reference's
    # /moderate fields (imageUrl, imageBase64), which a /v1 caller never sent.
    png = {"type": "image_url", "image_url": {"url": "data:image/png;base64,aGVsbG8="}}
    cases: list[tuple[Any, str]] = [
        (5, "must be a string, a list of strings, or a list of content parts"),
        (None, "must be a string, a list of strings, or a list of content parts"),
        (["a", {"type": "text", "text": "b"}], "must be a string, a list of strings, or a list of content parts"),
        ([[]], "must be a string, a list of strings, or a list of content parts"),
        (["a", ""], "a string in the list is empty"),
        ([{"type": "nope"}], "type must be 'text' or 'image_url'"),
        ([{"type": "text", "text": 5}], "a text part needs a 'text' string"),
        ([{"type": "text", "text": ""}], "send a non-empty text part or an image_url part"),
        ([png], "image_url is not a PNG, JPEG, GIF or WebP image"),
    ]
    async with httpx.AsyncClient(timeout=30, headers=funded.headers) as c:
        for value, expected in cases:
            r = await c.post(f"{gateway}/v1/moderations", json={"input": value})
            assert r.status_code == 400, (value, r.text)
            message = r.json()["error"]["message"]
            assert expected in message, (value, message)
            assert "constrained" not in message and "imageUrl" not in message and "imageBase64" not in message
    assert await audit(app, funded.uid) == (5_000_000, 5_000_000)  # nothing charged


async def test_moderation_idempotency_key_replays_every_input_and_charges_once(
        oai: OpenAIClient, funded: Account, moderation_worker: Any, app: Any) -> None:
    # It used to be dropped: every retry of the same request was charged again.
    client = oai(funded, max_retries=0)
    key = {"Idempotency-Key": f"m-{uuid.uuid4()}"}
    first = await client.moderations.create(input=["Have a lovely day!", "You idiot"], extra_headers=key)
    again = await client.moderations.create(input=["Have a lovely day!", "You idiot"], extra_headers=key)
    assert again.id == first.id
    assert [r.model_dump() for r in again.results] == [r.model_dump() for r in first.results]
    for other in (["Have a lovely day!"], ["Have a lovely day!", "You fool"]):
        with pytest.raises(openai.ConflictError):
            await client.moderations.create(input=other, extra_headers=key)
    assert await audit(app, funded.uid) == (4_980_000, 4_980_000)  # two inputs at $0.01, once
