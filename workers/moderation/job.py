"""The moderation pool's job: read the task's request (and its image from Redis), run the
engine, return the full moderation response as the task's output."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg
from arq import func

from jobs import keys
from jobs.names import MODERATION
from jobs.settings import Settings
from workers.context import WorkerContext, wctx
from workers.moderation.engine import ModerationEngine
from workers.moderation.openai import Image
from workers.providers.errors import ProviderRejected
from workers.runner import run_task

log = logging.getLogger("syncnode.moderation")
Hook = Callable[[dict[str, Any]], Awaitable[None]]


def engine(ctx: dict[str, Any]) -> ModerationEngine:
    e: ModerationEngine = ctx["moderation"]
    return e


async def moderation_run(ctx: dict[str, Any], job_id: str) -> dict[str, Any]:
    eng = engine(ctx)

    async def work(w: WorkerContext, row: asyncpg.Record, key: str | None) -> Any:
        req: dict[str, Any] = row["request"]
        image = None
        if meta := req.get("image"):
            data = await w.redis.get(keys.blob(meta["sha256"]))
            if data is None:
                raise ProviderRejected("SyncNode", "the image expired before the task ran; send it again")
            image = Image(bytes(data), meta["mime"])
        result = await eng.moderate(req.get("text"), image)
        return {"uid": row["uid"], **result}

    return await run_task(wctx(ctx), MODERATION.function, job_id, MODERATION.key_name, work)


def with_models(on_startup: Hook, on_shutdown: Hook) -> dict[str, Hook]:
    """The pool's startup/shutdown hooks plus the models: loaded once, before the first job."""

    async def startup(ctx: dict[str, Any]) -> None:
        await on_startup(ctx)
        w = wctx(ctx)
        e = ModerationEngine(w.settings, w.metrics)
        ctx["moderation"] = e
        took = await e.start()
        log.info("moderation backend %s ready in %.2f s", e.backend, took)

    async def shutdown(ctx: dict[str, Any]) -> None:
        e = ctx.get("moderation")
        if isinstance(e, ModerationEngine):
            await e.aclose()
        await on_shutdown(ctx)

    return {"on_startup": startup, "on_shutdown": shutdown}


def moderation_functions(s: Settings) -> list[Any]:
    return [func(moderation_run, name=MODERATION.function, timeout=s.moderation_job_timeout_seconds)]
