"""The chat pool's jobs: one chat completion (streamed or not) or one embeddings call at
OpenRouter or OpenAI with the user's own key."""

from __future__ import annotations

from typing import Any

import asyncpg

from jobs.names import CHAT, CHATGPT, EMBEDDINGS, EMBEDDINGS_OPENAI, TaskKind
from workers.context import WorkerContext, wctx
from workers.providers import chat as chat_api
from workers.providers.http import call
from workers.providers.retry import RetryPolicy
from workers.runner import run_task
from workers.stream import StreamRun, is_streamed


def _job(kind: TaskKind) -> Any:
    async def work(w: WorkerContext, row: asyncpg.Record, key: str | None) -> Any:
        client = w.http[kind.provider]
        assert key is not None
        return await call(kind.provider, lambda: chat_api.complete(client, kind.provider, key, row["request"]),
                          RetryPolicy.chat(w.settings), metrics=w.metrics)

    async def job(ctx: dict[str, Any], job_id: str) -> dict[str, Any]:
        w = wctx(ctx)
        run = StreamRun(w, job_id, kind.provider, int(ctx.get("job_try") or 2))

        async def either(w: WorkerContext, row: asyncpg.Record, key: str | None) -> Any:
            if is_streamed(row):
                return await run.work(w, row, key)
            run.plain = True
            return await work(w, row, key)

        result = await run_task(w, kind.function, job_id, kind.key_name, either)
        await run.finish(result["outcome"])
        return result

    job.__name__ = job.__qualname__ = kind.function.replace(".", "_")
    return job


def _embed_job(kind: TaskKind) -> Any:
    async def work(w: WorkerContext, row: asyncpg.Record, key: str | None) -> Any:
        client = w.http[kind.provider]
        assert key is not None
        return await call(kind.provider, lambda: chat_api.embed(client, kind.provider, key, row["request"]),
                          RetryPolicy.chat(w.settings), metrics=w.metrics)

    async def job(ctx: dict[str, Any], job_id: str) -> dict[str, Any]:
        return await run_task(wctx(ctx), kind.function, job_id, kind.key_name, work)

    job.__name__ = job.__qualname__ = kind.function.replace(".", "_")
    return job


chat_openrouter = _job(CHAT)
chat_openai = _job(CHATGPT)
embeddings_openrouter = _embed_job(EMBEDDINGS)
embeddings_openai = _embed_job(EMBEDDINGS_OPENAI)
