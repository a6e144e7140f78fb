"""A streamed /v1 request replayed with its Idempotency-Key after the task's stream expired gets the
content the first request got, rebuilt from the completion the task kept (``ingress/v1/replay.py``),
not an empty stream or a wait ending in a 504; a failure replays as the same error."""

from __future__ import annotations

import uuid
from typing import Any

import openai
import pytest

from ingress.v1.replay import chunks
from jobs import keys
from tests.fakes import chat_provider
from tests.fixtures.accounts import Account, audit
from tests.fixtures.v1 import OpenAIClient
from workers.assemble import Assembler

NOT_FOUND = {"message": "The model `x` does not exist", "type": "invalid_request_error", "param": "model",
             "code": "model_not_found"}


def user(prompt: str) -> list[Any]:
    return [{"role": "user", "content": prompt}]


async def refused(client: Any, model: str, prompt: str, key: dict[str, str], **kw: Any) -> openai.APIStatusError:
    """The SDK's exception for a streamed request the gateway answers with an error."""
    with pytest.raises(openai.APIStatusError) as e:
        await client.chat.completions.create(model=model, messages=user(prompt), stream=True, extra_headers=key,
                                             **kw)
    return e.value


async def _expire(app: Any, job_id: str, *, status_too: bool) -> None:
    redis = app.state.sn.redis
    assert await redis.delete(keys.chat_stream(job_id)) == 1
    if status_too:  # what 24 hours later looks like: only Postgres remembers the task
        await redis.delete(keys.task_status(job_id))


@pytest.mark.parametrize("status_too", [False, True], ids=["stream-expired", "stream-and-status-expired"])
async def test_a_streamed_replay_after_the_stream_expired_gets_the_same_content(
        oai: OpenAIClient, funded: Account, chat_worker: Any, app: Any, status_too: bool) -> None:
    client = oai(funded, max_retries=0)
    key = {"Idempotency-Key": f"s-{uuid.uuid4()}"}
    prompt = f"replayed {uuid.uuid4()}"
    opts = {"include_usage": True}
    first = await client.chat.completions.create(model="chunks-3", messages=user(prompt), stream=True,
                                                 stream_options=opts, extra_headers=key)
    one = [c async for c in first]
    job_id = first.response.headers["x-syncnode-job-id"]
    await _expire(app, job_id, status_too=status_too)
    again = await client.chat.completions.create(model="chunks-3", messages=user(prompt), stream=True,
                                                 stream_options=opts, extra_headers=key)
    two = [c async for c in again]
    assert again.response.headers["x-syncnode-job-id"] == job_id

    def text(cs: list[Any]) -> str:
        return "".join(c.choices[0].delta.content or "" for c in cs if c.choices)

    assert text(one) == text(two) == "w0 w1 w2 "
    assert [c.usage for c in one if c.usage] == [c.usage for c in two if c.usage] != []
    assert {c.id for c in one} == {c.id for c in two}
    assert [c.choices[0].finish_reason for c in two if c.choices] == ["stop"]
    assert len(chat_provider.calls_with_prompt(prompt)) == 1  # the replay called no provider
    assert await audit(app, funded.uid) == (4_980_000, 4_980_000)  # and was not charged


async def test_a_failed_streamed_replay_after_the_stream_expired_is_the_same_error(
        oai: OpenAIClient, funded: Account, chat_worker: Any, app: Any) -> None:
    client = oai(funded, max_retries=0)
    key = {"Idempotency-Key": f"f-{uuid.uuid4()}"}
    prompt = f"refused {uuid.uuid4()}"

    def attempt() -> Any:
        return refused(client, "error-404", prompt, key, extra_body={"fake_error": NOT_FOUND})

    a = await attempt()
    rows = await app.state.sn.db.fetch("SELECT job_id FROM tasks WHERE uid = $1", funded.uid)
    await app.state.sn.redis.delete(keys.chat_stream(rows[0]["job_id"]))
    b = await attempt()
    assert (type(a), a.status_code, a.code, a.param) == (type(b), b.status_code, b.code, b.param)
    assert (b.status_code, b.code) == (400, "model_not_found")
    assert await audit(app, funded.uid) == (5_000_000, 5_000_000)


def test_the_rebuilt_chunks_assemble_into_the_completion_the_task_kept() -> None:
    """Whatever a stream assembled into (text, refusals, reasoning, tool calls, several choices,
    logprobs, usage), the chunks rebuilt from it assemble into the same completion."""
    sent: list[dict[str, Any]] = [
        {"id": "gen-1", "created": 1, "model": "m", "provider": "P", "choices": [
            {"index": 0, "delta": {"role": "assistant", "content": "Hel", "reasoning": "think"}},
            {"index": 1, "delta": {"role": "assistant", "refusal": "no"}}]},
        {"id": "gen-1", "choices": [
            {"index": 0, "delta": {"content": "lo", "tool_calls": [
                {"index": 0, "id": "call_1", "type": "function", "function": {"name": "f", "arguments": "{\"a\""}},
                {"index": 1, "id": "call_2", "type": "function", "function": {"name": "g", "arguments": "{}"}}]},
             "logprobs": {"content": [{"token": "lo", "logprob": -0.1}]}},
            {"index": 1, "delta": {}, "finish_reason": "stop"}]},
        {"id": "gen-1", "choices": [
            {"index": 0, "delta": {"tool_calls": [{"index": 0, "function": {"arguments": ": 1}"}}]},
             "finish_reason": "tool_calls"}]},
        {"id": "gen-1", "choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7}},
    ]
    first = Assembler()
    for c in sent:
        first.add(c)
    kept = first.completion()
    again = Assembler()
    for c in chunks(kept):
        again.add(c)
    assert again.completion() == kept
    assert kept["choices"][0]["message"]["tool_calls"][0]["function"]["arguments"] == "{\"a\": 1}"


@pytest.mark.parametrize("kept", [None, "text", {"choices": "x"}, {"choices": [1, {"message": 2}]}])
def test_an_odd_kept_output_rebuilds_into_an_empty_stream_not_an_error(kept: Any) -> None:
    assert chunks(kept) == [{"object": "chat.completion.chunk", "choices": []}]


async def test_a_replay_without_include_usage_gets_no_usage_chunk(
        oai: OpenAIClient, funded: Account, chat_worker: Any, app: Any) -> None:
    """The task keeps usage whatever was asked; the first stream relayed it only when asked
    (a chunk with no choices breaks clients reading chunk.choices[0]), and so must a replay."""
    client = oai(funded, max_retries=0)
    key = {"Idempotency-Key": f"u-{uuid.uuid4()}"}
    prompt = f"no usage {uuid.uuid4()}"
    first = await client.chat.completions.create(model="chunks-3", messages=user(prompt), stream=True,
                                                 extra_headers=key)
    one = [c async for c in first]
    await _expire(app, first.response.headers["x-syncnode-job-id"], status_too=False)
    again = await client.chat.completions.create(model="chunks-3", messages=user(prompt), stream=True,
                                                 extra_headers=key)
    two = [c async for c in again]
    assert [c for c in one if not c.choices or c.usage] == []
    assert [c for c in two if not c.choices or c.usage] == []
    assert "".join(c.choices[0].delta.content or "" for c in two) == "w0 w1 w2 "


async def test_a_stream_that_broke_off_replays_its_text_then_the_error_event(
        oai: OpenAIClient, funded: Account, chat_worker: Any, app: Any) -> None:
    """A stream that failed after its first chunk was charged, and the client got the text and
    then an error event: a replay after the stream expired gets that again, not a 502 for a
    task it paid for."""
    client = oai(funded, max_retries=0)
    key = {"Idempotency-Key": f"m-{uuid.uuid4()}"}
    prompt = f"midfail {uuid.uuid4()}"

    async def attempt() -> tuple[str, openai.APIError, str]:
        stream = await client.chat.completions.create(model="midfail-3", messages=user(prompt), stream=True,
                                                      extra_headers=key)
        got = []
        with pytest.raises(openai.APIError) as e:
            async for c in stream:
                got.append(c.choices[0].delta.content or "")
        return "".join(got), e.value, stream.response.headers["x-syncnode-job-id"]

    text, err, job_id = await attempt()
    row = await app.state.sn.db.fetchrow("SELECT status, refunded FROM tasks WHERE job_id = $1", job_id)
    assert (row["status"], row["refunded"]) == ("failed", False)
    await _expire(app, job_id, status_too=True)
    text2, err2, _ = await attempt()
    assert text2 == text == "w0 w1 w2 "
    assert (type(err2), err2.message, err2.code) == (type(err), err.message, err.code)
    assert len(chat_provider.calls_with_prompt(prompt)) == 1
    assert await audit(app, funded.uid) == (4_980_000, 4_980_000)


async def test_a_stream_whose_key_went_before_it_ran_is_the_same_error_when_replayed(
        oai: OpenAIClient, funded: Account, app: Any) -> None:
    """The provider key removed between the request and its run is the request's fault (400, as
    a whole answer says it): the stream's end entry must say so as the task row does, or the
    first answer (from the stream) and a replay (from the row) differ."""
    import asyncio

    from tests.fixtures.workers import start_inprocess_worker, stop_inprocess_worker

    client = oai(funded, max_retries=0)
    key = {"Idempotency-Key": f"k-{uuid.uuid4()}"}
    prompt = f"keyless {uuid.uuid4()}"

    def attempt() -> Any:
        return refused(client, "chunks-3", prompt, key)

    first = asyncio.create_task(attempt())
    db = app.state.sn.db
    for _ in range(200):
        job_id = await db.fetchval("SELECT job_id FROM tasks WHERE uid = $1", funded.uid)
        if job_id is not None:
            break
        await asyncio.sleep(0.02)
    assert job_id is not None
    removed = await db.fetch("DELETE FROM provider_keys WHERE uid = $1 RETURNING *", funded.uid)
    w, task = await start_inprocess_worker("chat")
    try:
        a = await first
    finally:
        await stop_inprocess_worker(w, task)
    for row in removed:  # back, or the replay is refused before it finds its task
        cols = list(row.keys())
        await db.execute(f"INSERT INTO provider_keys ({', '.join(cols)}) "
                         f"VALUES ({', '.join(f'${i + 1}' for i in range(len(cols)))})", *row.values())
    await _expire(app, job_id, status_too=True)
    b = await attempt()
    assert (type(b), b.status_code, b.message) == (type(a), a.status_code, a.message)
    assert a.status_code == 400 and "removed before the task ran" in a.message
    assert await audit(app, funded.uid) == (5_000_000, 5_000_000)
