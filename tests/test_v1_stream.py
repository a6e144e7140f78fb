"""``stream: true`` on /v1/chat/completions: chunks relayed as they arrive, the client going
away cancels the provider call, Last-Event-ID resumes, errors before and after the first chunk,
and a worker killed mid-stream."""

from __future__ import annotations

import asyncio
import signal
import time
import uuid
from typing import Any

import httpx
import openai
import pytest

from storage.tasks import TaskRepository
from tests.fakes import chat_stream
from tests.fixtures.accounts import Account, MakeAccount, audit
from tests.fixtures.v1 import OpenAIClient, worker_settings

WORDS = "".join(chat_stream.text_of(i) for i in range(50))


def user(prompt: str) -> list[Any]:
    return [{"role": "user", "content": prompt}]


def record(prompt: str) -> dict[str, Any]:
    found = [s for s in chat_stream.STREAMS if s["prompt"] == prompt]
    assert len(found) == 1, found
    return found[0]


async def wait_task(app: Any, job_id: str, timeout: float = 20) -> Any:
    repo = TaskRepository(app.state.sn.db)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        row = await repo.by_job_id(job_id)
        if row is not None and row["status"] in ("completed", "failed", "canceled"):
            return row
        await asyncio.sleep(0.05)
    raise AssertionError(f"task {job_id} did not finish")


async def events(resp: httpx.Response) -> list[tuple[str | None, str]]:
    """(id, data) of every SSE event of a response, read to its end."""
    out: list[tuple[str | None, str]] = []
    eid: str | None = None
    async for line in resp.aiter_lines():
        if line.startswith("id: "):
            eid = line[4:]
        elif line.startswith("data: "):
            out.append((eid, line[6:]))
            eid = None
    return out


async def test_streamed_completion_arrives_chunk_by_chunk(oai: OpenAIClient, funded: Account, chat_worker: Any,
                                                          app: Any) -> None:
    prompt = f"stream {uuid.uuid4()}"
    stream = await oai(funded).chat.completions.create(model="delay-20", messages=user(prompt), stream=True)
    text, first_seen_unfinished, n = "", None, 0
    async for chunk in stream:
        if n == 0:
            # The first chunk is here while the provider is still sending the rest.
            first_seen_unfinished = "finished_at" not in record(prompt)
        n += 1
        assert chunk.object == "chat.completion.chunk" and chunk.usage is None
        text += chunk.choices[0].delta.content or ""
    assert first_seen_unfinished is True
    assert n == 50 and text == WORDS
    job_id = stream.response.headers["x-syncnode-job-id"]
    row = await wait_task(app, job_id)
    assert row["status"] == "completed" and row["output"]["choices"][0]["message"]["content"] == WORDS
    assert record(prompt)["stream_options"] == {"include_usage": True}  # we always ask, for the record
    assert await audit(app, funded.uid) == (4_980_000, 4_980_000)


async def test_include_usage_is_honoured(oai: OpenAIClient, funded: Account, chat_worker: Any) -> None:
    stream = await oai(funded).chat.completions.create(
        model="chunks-5", messages=user(f"usage {uuid.uuid4()}"), stream=True,
        stream_options={"include_usage": True})
    chunks = [c async for c in stream]
    assert len(chunks) == 6 and chunks[-1].choices == []
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 5


async def test_sse_frames_are_openais(gateway: str, funded: Account, chat_worker: Any) -> None:
    async with httpx.AsyncClient(timeout=30) as c, c.stream(
            "POST", f"{gateway}/v1/chat/completions", headers=funded.headers,
            json={"model": "chunks-3", "messages": user("frames"), "stream": True}) as r:
        assert r.headers["content-type"].startswith("text/event-stream")
        raw = b"".join([b async for b in r.aiter_bytes()])
    frames = raw.split(b"\n\n")
    assert frames[-2:] == [b"data: [DONE]", b""]
    for f in frames[:-2]:
        eid, data = f.split(b"\n")
        assert eid.startswith(b"id: ") and data.startswith(b'data: {"id":"chatcmpl-fake"')


async def test_client_going_away_closes_the_provider_call_within_a_second(
        oai: OpenAIClient, funded: Account, chat_worker: Any, app: Any) -> None:
    prompt = f"leave {uuid.uuid4()}"
    stream = await oai(funded).chat.completions.create(model="delay-100", messages=user(prompt), stream=True)
    got = 0
    async for _ in stream:
        got += 1
        if got == 5:
            break
    await stream.close()
    closed = time.time()
    rec = record(prompt)
    while "disconnected_at" not in rec and "finished_at" not in rec and time.time() - closed < 5:
        await asyncio.sleep(0.02)
    assert "finished_at" not in rec, "the provider streamed to the end"
    assert rec["disconnected_at"] - closed < 1.0
    row = await wait_task(app, stream.response.headers["x-syncnode-job-id"])
    # Ended with the text received so far: completed, charged.
    assert row["status"] == "completed" and row["output"]["partial"] is True
    assert row["output"]["choices"][0]["message"]["content"].startswith("w0 w1 w2 w3 w4 ")
    assert await audit(app, funded.uid) == (4_980_000, 4_980_000)


async def test_last_event_id_resumes_with_exactly_the_missing_chunks(
        gateway: str, funded: Account, chat_worker: Any) -> None:
    async with httpx.AsyncClient(timeout=30, headers=funded.headers) as c:
        # An async caller: 202 at once, then reads the stream (all of it, then from an event on).
        r = await c.post(f"{gateway}/v1/chat/completions", headers={"Prefer": "respond-async"},
                         json={"model": "delay-10", "messages": user("resume"), "stream": True})
        assert r.status_code == 202
        url = r.json()["stream"].replace("http://gateway.test", gateway)
        async with c.stream("GET", url) as s:
            full = await events(s)
        assert len(full) == 51 and full[-1] == (None, "[DONE]")
        last_seen = full[19][0]
        assert last_seen is not None
        async with c.stream("GET", url, headers={"Last-Event-ID": last_seen}) as s:
            rest = await events(s)
        by_job = url.replace(f"/tasks/{r.json()['id']}/", f"/tasks/{r.json()['job_id']}/")
        async with c.stream("GET", by_job, headers={"Last-Event-ID": full[48][0] or ""}) as s:
            tail = await events(s)
        bad = await c.get(url, headers={"Last-Event-ID": "yesterday"})
    assert rest == full[20:]
    assert tail == full[49:]
    assert bad.status_code == 400


async def test_provider_error_before_the_first_chunk_is_an_error_answer_and_a_refund(
        oai: OpenAIClient, funded: Account, chat_worker: Any, app: Any) -> None:
    client = oai(funded, max_retries=0)
    with worker_settings(chat_worker, provider_max_retries=0):
        with pytest.raises(openai.InternalServerError):
            await client.chat.completions.create(model="fail-500", messages=user("x"), stream=True)
        with pytest.raises(openai.BadRequestError):
            await client.chat.completions.create(model="reject-400", messages=user("y"), stream=True)
        with pytest.raises(openai.RateLimitError) as rl:
            await client.chat.completions.create(model="limited-7", messages=user(f"rl {uuid.uuid4()}"),
                                                 stream=True)
        assert rl.value.response.headers["retry-after"] == "7"
        # OpenRouter's error as JSON where a stream was asked for.
        with pytest.raises(openai.InternalServerError) as e:
            await client.chat.completions.create(model="or-error-200", messages=user("z"), stream=True)
        assert "Provider returned error" in e.value.message
    assert await audit(app, funded.uid) == (5_000_000, 5_000_000)


async def test_provider_error_after_the_first_chunk_is_an_error_event_and_no_refund(
        oai: OpenAIClient, funded: Account, chat_worker: Any, app: Any) -> None:
    stream = await oai(funded).chat.completions.create(model="midfail-5", messages=user("mid"), stream=True)
    got = []
    with pytest.raises(openai.APIError) as e:
        async for chunk in stream:
            got.append(chunk.choices[0].delta.content)
    assert len(got) == 5 and "broke off" in e.value.message
    row = await wait_task(app, stream.response.headers["x-syncnode-job-id"])
    assert row["status"] == "failed" and not row["refunded"]
    assert row["output"]["choices"][0]["message"]["content"] == "w0 w1 w2 w3 w4 "
    assert await audit(app, funded.uid) == (4_980_000, 4_980_000)


async def test_a_provider_sending_garbage_fails_the_stream_by_the_same_rules(
        oai: OpenAIClient, funded: Account, chat_worker: Any, app: Any) -> None:
    client = oai(funded, max_retries=0)
    with worker_settings(chat_worker, provider_max_retries=0):
        with pytest.raises(openai.InternalServerError) as e:  # before the first chunk: refunded
            await client.chat.completions.create(model="garbage-0", messages=user("g0"), stream=True)
        assert "not JSON" in e.value.message
        stream = await client.chat.completions.create(model="garbage-3", messages=user("g3"), stream=True)
        got = []
        with pytest.raises(openai.APIError):
            async for chunk in stream:
                got.append(chunk)
    assert len(got) == 3
    row = await wait_task(app, stream.response.headers["x-syncnode-job-id"])
    assert row["status"] == "failed" and not row["refunded"]
    assert await audit(app, funded.uid) == (4_980_000, 4_980_000)


async def test_a_stream_is_only_its_owners(gateway: str, funded: Account, make_account: MakeAccount,
                                           chat_worker: Any, app: Any) -> None:
    other = await make_account(keys={"openrouter_key": "sk-or-v1-other"})
    async with httpx.AsyncClient(timeout=30) as c:
        r = await c.post(f"{gateway}/v1/chat/completions", headers={**funded.headers, "Prefer": "respond-async"},
                         json={"model": "chunks-2", "messages": user("mine"), "stream": True})
        task_id, job_id = r.json()["id"], r.json()["job_id"]
        whole = await c.post(f"{gateway}/v1/chat/completions", headers={**funded.headers, "Prefer": "respond-async"},
                             json={"model": "m", "messages": user("not streamed")})
        assert "stream" not in whole.json()
        for who, path in [(other, task_id), (other, job_id), (funded, 999999999), (funded, whole.json()["id"]),
                          (funded, "not-a-job-id"), (funded, "%C2%B2"), (funded, "9" * 30), (funded, "%00")]:
            got = await c.get(f"{gateway}/v1/tasks/{path}/stream", headers=who.headers)
            assert got.status_code == 404, (path, got.text)
            assert got.json()["error"]["type"] == "not_found_error"
        unauth = await c.get(f"{gateway}/v1/tasks/{task_id}/stream")
    assert unauth.status_code == 401
    for j in (job_id, whole.json()["job_id"]):
        await wait_task(app, j)  # not left running for the next test's worker


@pytest.mark.slow
async def test_worker_killed_mid_stream_ends_in_an_error_event_and_one_charge_at_most(
        gateway: str, funded: Account, worker_process: Any, app: Any) -> None:
    first = worker_process("chat")
    got: list[tuple[str | None, str]] = []
    async with httpx.AsyncClient(timeout=30, headers=funded.headers) as c, c.stream(
            "POST", f"{gateway}/v1/chat/completions",
            json={"model": "delay-200", "messages": user(f"killed {uuid.uuid4()}"), "stream": True}) as r:
        job_id = r.headers["x-syncnode-job-id"]
        eid = None
        t_kill = None
        async for line in r.aiter_lines():
            if line.startswith("id: "):
                eid = line[4:]
            elif line.startswith("data: "):
                got.append((eid, line[6:]))
                if len(got) == 3:
                    first.send_signal(signal.SIGKILL)
                    first.wait()
                    t_kill = time.monotonic()
    assert t_kill is not None and time.monotonic() - t_kill < 15  # ended, did not hang
    assert '"error"' in got[-1][1] and len(got) < 51
    worker_process("chat")  # the job runs again: it cannot stream twice, so it fails, refunded
    row = await wait_task(app, job_id, timeout=30)
    assert row["status"] == "failed"
    kinds = [x["kind"] for x in await app.state.sn.db.fetch("SELECT kind FROM ledger WHERE task_id = $1", row["id"])]
    assert kinds in (["charge"], ["charge", "refund"])
    assert await audit(app, funded.uid) in ((4_980_000, 4_980_000), (5_000_000, 5_000_000))
