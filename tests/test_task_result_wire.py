"""The task result on the wire, as a worker pushes it: exact keys, their order and their types.

Clients of the done list and redis-cli users read these bytes; ``jobs/results.py`` must keep
them as they were when each kind of result was a hand-built dict.
"""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import httpx
import orjson

from tests.fixtures.accounts import Account
from tests.fixtures.v1 import worker_settings

CHAT = "/chat-completion"
_BASE = ["status", "output", "error", "task_id", "model", "cost_micros", "updated_at"]


async def _pushed(client: httpx.AsyncClient, app: Any, who: Account, model: str) -> tuple[bytes, dict[str, Any]]:
    """Fire and poll (no reply list): the worker pushes the result on the task's done list."""
    from jobs import keys

    r = await client.post(CHAT, headers={**who.headers, "Prefer": "respond-async"},
                          json={"model": model, "prompt": f"wire {uuid.uuid4()}"})
    assert r.status_code == 202, r.text
    job_id = r.json()["job_id"]
    for _ in range(400):
        raw = await app.state.sn.redis.lrange(keys.done(job_id), 0, -1)
        if raw:
            assert len(raw) == 1
            return bytes(raw[0]), orjson.loads(raw[0])
        await asyncio.sleep(0.025)
    raise AssertionError(f"no result pushed for {job_id}")


async def test_a_completed_result_has_the_seven_keys_in_order(
        client: httpx.AsyncClient, funded: Account, chat_worker: Any, app: Any) -> None:
    raw, d = await _pushed(client, app, funded, "m")
    assert list(d) == _BASE
    assert (d["status"], d["error"], d["model"], d["cost_micros"]) == ("completed", None, "m", 20_000)
    assert isinstance(d["task_id"], int) and isinstance(d["updated_at"], str)
    assert raw.startswith(b'{"status":"completed","output":{')


async def test_a_provider_failure_adds_client_error_and_what_the_provider_said(
        client: httpx.AsyncClient, funded: Account, chat_worker: Any, app: Any) -> None:
    with worker_settings(chat_worker, provider_max_retries=0):
        _, rejected = await _pushed(client, app, funded, "reject-400")
        _, failed = await _pushed(client, app, funded, "fail-500")
    # The fake's 400 says code "model_not_found" and param null: only what was said is added, last.
    assert list(rejected) == [*_BASE, "client_error", "upstream_status", "retry_after", "upstream_code"]
    assert (rejected["status"], rejected["output"], rejected["cost_micros"]) == ("failed", None, 0)
    assert (rejected["client_error"], rejected["upstream_status"], rejected["retry_after"]) == (True, 400, None)
    assert rejected["upstream_code"] == "model_not_found"
    assert list(failed) == [*_BASE, "client_error", "upstream_status", "retry_after"]
    assert (failed["client_error"], failed["upstream_status"], failed["retry_after"]) == (False, 500, None)
    assert failed["error"].endswith("(gave up after retries)")
