"""What the ingress shares across requests, built once in the lifespan."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import asyncpg
from redis.asyncio import Redis
from starlette.requests import Request

from jobs.queue import JobQueue
from jobs.settings import Settings
from storage.secrets import SecretBox
from storage.status import StatusStore
from storage.task_batches import Tasks

if TYPE_CHECKING:
    from billing.context import Billing
    from ingress.auth import Authenticator
    from ingress.limits import Limiter
    from ingress.replies import Replies


@dataclass(slots=True)
class AppState:
    settings: Settings
    db: asyncpg.Pool
    redis: Redis
    queue: JobQueue
    status: StatusStore
    box: SecretBox
    auth: Authenticator
    # Charges, batched across concurrent requests (storage/task_batches.py).
    tasks: Tasks
    # Where synchronous requests hear their task ended (one reply list per process).
    replies: Replies
    # Card payments; None without STRIPE_SECRET_KEY.
    billing: Billing | None = None
    # Per-account limits (ingress/limits.py); None turns them all off.
    limiter: Limiter | None = None


def state(request: Request) -> AppState:
    s: AppState = request.app.state.sn
    return s
