"""``jobs/results.py``: one task result from row to JSON and back, and one failure → HTTP status."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest

from jobs.errors import BadRequest, RateLimited, SyncNodeError, UpstreamError
from jobs.results import TaskResult, Upstream, failure_error
from tests.fixtures.accounts import Account

_AT = datetime(2026, 11, 30, 12, 0, 0, 123456, tzinfo=UTC)


def _row(**over: Any) -> dict[str, Any]:
    """The columns of a task row a result reads (a finishing statement returns a subset)."""
    return {"id": 7, "model": "openai/gpt-4o", "cost_micros": 20_000, "updated_at": _AT, "status": "completed",
            "output": {"choices": [{"message": {"content": "hi"}}]}, "error": None, "refunded": False,
            "client_error": None, "upstream_status": None, "upstream_retry_after": None, "upstream_code": None,
            "upstream_param": None, **over}


@pytest.mark.parametrize("result", [
    pytest.param(TaskResult.from_row(_row()), id="completed"),
    pytest.param(TaskResult.from_row(_row(status="failed", output=None, error="boom", refunded=True)),
                 id="failed-refunded"),
    pytest.param(TaskResult.finished(_row(), "failed", error="x (400): bad", refunded=True, client_error=True,
                                     upstream=Upstream(400)), id="rejected"),
    pytest.param(TaskResult.finished(_row(), "failed", error="x (404): no such model", refunded=True,
                                     client_error=True, upstream=Upstream(404, None, "model_not_found", "model")),
                 id="rejected-with-code-and-param"),
    pytest.param(TaskResult.finished(_row(), "failed", error="x (400): bad", refunded=True, client_error=True,
                                     upstream=Upstream(400, param="messages")), id="rejected-with-param-only"),
    pytest.param(TaskResult.finished(_row(), "failed", error="x (429): slow down", refunded=True,
                                     client_error=False, upstream=Upstream(429, 2.5)), id="rate-limited"),
    pytest.param(TaskResult.finished(_row(), "failed", error="network", refunded=True, client_error=False,
                                     upstream=Upstream(None)), id="no-answer"),
    pytest.param(TaskResult.finished(_row(), "completed", output=["https://x/y.png"], error="hosting failed"),
                 id="completed-hosting-error"),
    pytest.param(TaskResult.finished(_row(), "canceled", error="Canceled by the user", refunded=True),
                 id="canceled"),
])
def test_a_result_survives_the_wire(result: TaskResult) -> None:
    assert TaskResult.from_json(result.to_json()) == result
    assert TaskResult.from_json(result.to_json().decode()) == result


def test_from_row_speaks_the_public_status_and_charges_nothing_once_refunded() -> None:
    r = TaskResult.from_row(_row(status="failed", refunded=True))
    assert (r.status, r.cost_micros, r.updated_at) == ("failed", 0, _AT.isoformat())
    assert TaskResult.from_row(_row(status="running")).status == "in_progress"
    assert TaskResult.from_row(_row()).cost_micros == 20_000


def test_what_was_not_said_stays_off_the_wire() -> None:
    d = TaskResult.from_row(_row()).to_dict()
    assert list(d) == ["status", "output", "error", "task_id", "model", "cost_micros", "updated_at"]
    said = TaskResult.finished(_row(), "failed", refunded=True, client_error=False, upstream=Upstream(None)).to_dict()
    assert (said["client_error"], said["upstream_status"], said["retry_after"]) == (False, None, None)
    assert "upstream_code" not in said and "upstream_param" not in said


def test_a_result_the_old_code_wrote_still_reads() -> None:
    """Written before a provider's code and param were kept: no such keys, and none are made up."""
    old = (b'{"status":"failed","output":null,"error":"x (400): bad","task_id":7,"model":"m","cost_micros":0,'
           b'"updated_at":"2026-11-30T12:00:00.123456+00:00","client_error":true,"upstream_status":400,'
           b'"retry_after":null}')
    r = TaskResult.from_json(old)
    assert r.upstream == Upstream(400, None, None, None) and r.client_error is True
    assert r.to_json() == old  # and written back byte for byte


async def test_a_real_row_survives_the_wire(client: httpx.AsyncClient, funded: Account, chat_worker: Any,
                                            app: Any) -> None:
    from storage.tasks import TaskRepository

    r = await client.post("/chat-completion", headers=funded.headers,
                          json={"model": "m", "prompt": f"row {uuid.uuid4()}"})
    assert r.status_code == 200, r.text
    row = await TaskRepository(app.state.sn.db).by_job_id(r.json()["prediction"]["job_id"])
    assert row is not None
    result = TaskResult.from_row(row)
    assert (result.status, result.cost_micros, result.task_id) == ("completed", 20_000, row["id"])
    assert TaskResult.from_json(result.to_json()) == result


def _failed(**over: Any) -> TaskResult:
    return TaskResult.finished(_row(), "failed", error="it failed", refunded=True, **over)


@pytest.mark.parametrize(("result", "keep_rate_limit", "expected", "status_code"), [
    pytest.param(_failed(client_error=True, upstream=Upstream(400)), True, BadRequest, 400, id="rejected"),
    pytest.param(_failed(client_error=True), False, BadRequest, 400, id="rejected-reference"),
    pytest.param(_failed(client_error=False, upstream=Upstream(429, 1.2)), True, RateLimited, 429,
                 id="rate-limited"),
    pytest.param(_failed(client_error=False, upstream=Upstream(429, 1.2)), False, UpstreamError, 502,
                 id="rate-limited-reference"),
    pytest.param(_failed(client_error=False, upstream=Upstream(500)), True, UpstreamError, 502, id="gave-up"),
    pytest.param(_failed(), True, UpstreamError, 502, id="our-own-failure"),
    pytest.param(TaskResult.finished(_row(), "canceled", error="Canceled", refunded=True), True, UpstreamError, 502,
                 id="canceled"),
])
def test_each_failure_kind_raises_its_status(result: TaskResult, keep_rate_limit: bool,
                                             expected: type[SyncNodeError], status_code: int) -> None:
    with pytest.raises(expected) as e:
        result.raise_for_failure("job-1", extra={"prediction": {"id": 7}}, keep_rate_limit=keep_rate_limit)
    assert type(e.value) is expected and e.value.status_code == status_code
    assert e.value.message == result.error
    assert e.value.extra == {"job_id": "job-1", "prediction": {"id": 7}}


def test_a_providers_code_and_param_ride_on_its_4xx_answers_only() -> None:
    said = Upstream(400, None, "model_not_found", "model")
    rejected = failure_error("no", "j", client_error=True, upstream=said)
    assert (type(rejected), rejected.code, rejected.param) == (BadRequest, "model_not_found", "model")
    limited = failure_error("slow", "j", client_error=False, upstream=Upstream(429, 1.0, "rate_limit_exceeded"))
    assert (type(limited), limited.code, limited.param) == (RateLimited, "rate_limit_exceeded", None)
    gave_up = failure_error("boom", "j", client_error=False, upstream=Upstream(500, None, "server_error", "x"))
    assert (type(gave_up), gave_up.code, gave_up.param) == (UpstreamError, None, None)
    # The reference API's body has no place for them.
    assert rejected.body() == {"error": "no", "job_id": "j"}


def test_a_rate_limit_passes_on_the_providers_retry_after_rounded_up() -> None:
    e = failure_error("slow down", "j", client_error=False, upstream=Upstream(429, 1.2))
    assert (e.status_code, e.headers) == (429, {"Retry-After": "2"})
    assert failure_error("slow down", "j", client_error=False, upstream=Upstream(429)).headers is None


def test_a_completed_result_raises_nothing_and_returns_itself() -> None:
    done = TaskResult.from_row(_row())
    assert done.raise_for_failure("job-1") is done
    unnamed = TaskResult.finished(_row(), "failed", refunded=True)
    with pytest.raises(UpstreamError, match="^Task failed$"):
        unnamed.raise_for_failure("job-1")
