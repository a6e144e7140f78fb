"""What a worker process holds for its jobs: built in on_startup, closed in on_shutdown."""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import httpx
from redis.asyncio import Redis

from jobs.logs import POOL
from jobs.metrics import WorkerMetrics
from jobs.queue import JobQueue
from jobs.settings import Settings, get_settings, tune_gc
from storage.db import create_pool
from storage.files import s3 as s3_files
from storage.polls import PollBatches
from storage.secrets import SecretBox
from storage.status import StatusStore
from storage.task_batches import Tasks
from workers.cancels import StreamCancels
from workers.providers.http import make_client


@dataclass(slots=True)
class WorkerContext:
    pool_name: str
    settings: Settings
    db: asyncpg.Pool
    redis: Redis
    queue: JobQueue
    status: StatusStore
    box: SecretBox
    metrics: WorkerMetrics
    http: dict[str, httpx.AsyncClient] = field(default_factory=dict)
    background: list[asyncio.Task[Any]] = field(default_factory=list)
    # A busy worker reads and finishes its tasks in batches (storage/task_batches.py), and
    # announces them in batches (StatusStore.announce).
    tasks: Tasks = field(init=False)
    # The state reads and progress writes of the poll pool's many concurrent polls.
    polls: PollBatches = field(init=False)
    # Cancel flags of the /v1 streams this process relays, looked up together (workers/cancels.py).
    stream_cancels: StreamCancels = field(init=False)

    def __post_init__(self) -> None:
        self.tasks = Tasks(self.db)
        self.polls = PollBatches(self.db, self.status)
        self.stream_cancels = StreamCancels(self.redis, self.settings.v1_cancel_poll_seconds, self.background)


def wctx(ctx: dict[str, Any]) -> WorkerContext:
    w: WorkerContext = ctx["sn"]
    return w


def provider_clients(s: Settings, max_connections: int) -> dict[str, httpx.AsyncClient]:
    def mk(url: str) -> httpx.AsyncClient:
        return make_client(url, connect_timeout=s.provider_connect_timeout,
                           read_timeout=s.provider_read_timeout, max_connections=max_connections)
    return {"OpenRouter": mk(s.openrouter_base_url), "OpenAI": mk(s.openai_base_url),
            "Replicate": mk(s.replicate_base_url)}


def on_startup_for(pool_name: str, max_jobs: int) -> Any:
    async def on_startup(ctx: dict[str, Any]) -> None:
        POOL.set(pool_name)  # jobs are tasks started from this one: each inherits the pool
        s = get_settings()
        assert s.database_url, "DATABASE_URL must be set"
        redis: Redis = ctx["redis"]
        w = WorkerContext(
            pool_name=pool_name, settings=s,
            db=await create_pool(s.database_url, min_size=2, max_size=min(max_jobs, 20) + 2),
            redis=redis, queue=JobQueue(redis, s.status_ttl_seconds),
            status=StatusStore(redis, s.status_ttl_seconds), box=SecretBox(s.master_key_value()),
            metrics=WorkerMetrics(), http=provider_clients(s, max_jobs),
        )
        w.background.append(asyncio.create_task(w.metrics.run_flusher(redis)))
        ctx["sn"] = w
        tune_gc(s)

    return on_startup


async def on_shutdown(ctx: dict[str, Any]) -> None:
    w = ctx.get("sn")
    if not isinstance(w, WorkerContext):
        return
    for t in w.background:
        t.cancel()
    with contextlib.suppress(Exception):
        await asyncio.gather(*w.background, return_exceptions=True)
    for c in w.http.values():
        await c.aclose()
    with contextlib.suppress(Exception):
        await s3_files.close_all()
    try:
        await asyncio.wait_for(w.db.close(), 10)
    except TimeoutError:
        w.db.terminate()
