"""What an operator relies on: health, readiness, metrics, OpenAPI, migrations, Redis layout."""

from __future__ import annotations

import json
from typing import Any

import httpx

from tests.fixtures.accounts import Account
from tests.helpers import CHAT


async def test_health_and_readiness(client: httpx.AsyncClient) -> None:
    assert (await client.get("/healthz")).json() == {"status": "ok"}
    r = await client.get("/readyz")
    assert r.status_code == 200 and r.json() == {"status": "ok", "postgres": "ok", "redis": "ok"}


async def test_metrics_cover_requests_queues_jobs_and_provider_errors(
        client: httpx.AsyncClient, funded: Account, chat_worker: Any) -> None:
    await client.post(CHAT, headers=funded.headers, json={"model": "m", "prompt": "metered"})
    await client.post(CHAT, headers=funded.headers, json={"model": "reject-400", "prompt": "metered"})
    await chat_worker.ctx["sn"].metrics.flush(chat_worker.ctx["sn"].redis)
    text = (await client.get("/metrics")).text
    assert 'syncnode_http_requests_total{method="POST",route="/chat-completion",status="200"}' in text
    assert 'syncnode_queue_depth{pool="chat"}' in text and 'syncnode_queue_depth{pool="media"}' in text
    assert 'syncnode_jobs_total{function="chat.openrouter",outcome="completed",pool="chat"}' in text
    assert 'syncnode_job_duration_seconds_count{function="chat.openrouter",pool="chat"}' in text
    assert 'syncnode_provider_errors_total{provider="OpenRouter",status="400"}' in text


async def test_openapi_describes_the_api(client: httpx.AsyncClient) -> None:
    spec = (await client.get("/openapi.json")).json()
    assert spec["openapi"].startswith("3.")
    assert {"/chat-completion", "/chatgpt-completion", "/prediction-status", "/tasks/{id}"} <= set(spec["paths"])
    body = spec["paths"]["/chat-completion"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert body["$ref"].endswith("ChatRequest")
    assert "temperature" in spec["components"]["schemas"]["ChatRequest"]["properties"]


async def test_migrate_is_idempotent(stack: dict[str, Any]) -> None:
    from storage.migrate import migrate

    assert await migrate(stack["pg"].dsn) == []
    assert await migrate(stack["pg"].dsn) == []


async def test_jobs_and_status_are_readable_json_in_redis(client: httpx.AsyncClient, funded: Account,
                                                          app: Any) -> None:
    r = await client.post(CHAT, headers={**funded.headers, "Prefer": "respond-async"},
                          json={"model": "m", "prompt": "inspect me"})
    job_id = r.json()["job_id"]
    redis = app.state.sn.redis
    job = json.loads(await redis.get(f"arq:job:{job_id}"))
    assert job["f"] == "chat.openrouter" and job["a"] == [job_id]
    assert await redis.zscore("syncnode:queue:chat", job_id) is not None
    status = await redis.hgetall(f"syncnode:task:{job_id}")
    assert status[b"status"] == b"in_progress" and status[b"uid"] == funded.uid.encode()
