"""A request retried with its Idempotency-Key is answered from the task row, not from the worker's
result: a failure must answer exactly as the first request was answered (its status, a 429's
Retry-After, its body, and under /v1 the provider's error code and param), and call nobody again."""

from __future__ import annotations

import uuid
from typing import Any

import httpx
import openai
import pytest

from jobs.names import CHAT as KIND
from jobs.results import TaskResult, Upstream
from storage.charges import NewTask
from storage.tasks import TaskRepository
from tests.fixtures.accounts import Account, audit
from tests.fixtures.v1 import OpenAIClient, worker_settings
from tests.helpers import calls_for

MISSING = {"message": "The model `x` does not exist", "type": "invalid_request_error", "param": "model",
           "code": "model_not_found"}


def _said(e: openai.APIStatusError) -> tuple[Any, ...]:
    """All a client sees of an error answer (the job_id in the body names the same task)."""
    return type(e), e.status_code, e.body, e.code, e.param, e.response.headers.get("retry-after")


async def _v1_twice(client: Any, model: str, **kw: Any) -> tuple[openai.APIStatusError, openai.APIStatusError]:
    prompt, key = f"replay {uuid.uuid4()}", {"Idempotency-Key": f"k-{uuid.uuid4()}"}
    answers = []
    for _ in range(2):
        with pytest.raises(openai.APIStatusError) as e:
            await client.chat.completions.create(model=model, messages=[{"role": "user", "content": prompt}],
                                                 extra_headers=key, **kw)
        answers.append(e.value)
    assert len(calls_for(prompt)) == 1  # the replay answered from the task
    return answers[0], answers[1]


async def test_a_replayed_v1_failure_keeps_the_providers_code_and_param(
        oai: OpenAIClient, funded: Account, chat_worker: Any, app: Any) -> None:
    first, again = await _v1_twice(oai(funded, max_retries=0), "error-404", extra_body={"fake_error": MISSING})
    assert isinstance(first, openai.BadRequestError) and (first.code, first.param) == ("model_not_found", "model")
    assert _said(again) == _said(first)
    assert await audit(app, funded.uid) == (5_000_000, 5_000_000)  # refunded, once


async def test_a_replayed_v1_rate_limit_stays_a_429_with_its_retry_after(
        oai: OpenAIClient, funded: Account, chat_worker: Any) -> None:
    with worker_settings(chat_worker, provider_max_retries=0):
        first, again = await _v1_twice(oai(funded, max_retries=0), "limited-1")
    assert isinstance(first, openai.RateLimitError) and first.code == "rate_limit_exceeded"
    assert first.response.headers["retry-after"] == "1"
    assert _said(again) == _said(first)


@pytest.mark.parametrize(("model", "status"), [("reject-400", 400), ("limited-1", 502)],
                         ids=["provider-4xx", "provider-429"])
async def test_a_replayed_reference_failure_answers_as_the_first(
        client: httpx.AsyncClient, funded: Account, chat_worker: Any, model: str, status: int) -> None:
    prompt, headers = f"ref replay {uuid.uuid4()}", {**funded.headers, "Idempotency-Key": f"k-{uuid.uuid4()}"}
    with worker_settings(chat_worker, provider_max_retries=0):
        first, again = [await client.post("/chat-completion", headers=headers,
                                          json={"model": model, "prompt": prompt}) for _ in range(2)]
    assert first.status_code == again.status_code == status, first.text
    assert again.json() == first.json() and "retry-after" not in again.headers
    assert len(calls_for(prompt)) == 1


@pytest.mark.parametrize(("status", "client_error", "upstream"), [
    pytest.param("failed", True, Upstream(404, None, "model_not_found", "model"), id="rejected"),
    pytest.param("failed", False, Upstream(429, 2.5, "rate_limit_exceeded"), id="rate-limited"),
    pytest.param("failed", False, Upstream(500), id="gave-up"),
    pytest.param("failed", True, None, id="our-verdict"),
    pytest.param("canceled", None, None, id="canceled"),
])
async def test_a_failed_row_reads_back_as_the_worker_published_it(
        funded: Account, app: Any, status: str, client_error: bool | None, upstream: Upstream | None) -> None:
    repo = TaskRepository(app.state.sn.db)
    new = NewTask(job_id=str(uuid.uuid4()), uid=funded.uid, kind=KIND.name, pool=KIND.pool, model="m",
                  prompt="p", request={"model": "m"}, cost_micros=20_000, key_name=KIND.key_name)
    assert (await repo.charge_and_create(new)).task_id is not None
    row = await repo.finish_unpaid(new.job_id, status, "it ended", client_error=client_error, upstream=upstream)
    assert row is not None
    published = TaskResult.finished(row, status, error="it ended", refunded=True, client_error=client_error,
                                    upstream=upstream)
    stored = await repo.by_job_id(new.job_id)
    assert stored is not None and TaskResult.from_row(stored) == published
    assert await audit(app, funded.uid) == (5_000_000, 5_000_000)
