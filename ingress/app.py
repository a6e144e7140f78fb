"""``create_app()``: the whole ingress in one place — routes, middleware, errors, lifespan."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from starlette.applications import Starlette
from starlette.routing import Mount, Route

from billing.client import StripeGateway
from billing.context import Billing
from ingress import accounts, billing, cancel, chat, files, health, media, moderation, storage_config, tasks, webhooks
from ingress.access import Gateway
from ingress.admin_limits import get_limits, post_limits
from ingress.auth import Authenticator
from ingress.errors import HANDLERS
from ingress.hooks import get_secret, list_deliveries, rotate_secret
from ingress.limits import Limiter
from ingress.metrics import metrics
from ingress.openapi import openapi
from ingress.replies import Replies
from ingress.state import AppState
from ingress.stripe_webhooks import stripe_webhook
from ingress.v1 import chat as v1_chat
from ingress.v1 import embeddings as v1_embeddings
from ingress.v1 import feed as v1_feed
from ingress.v1 import models as v1_models
from ingress.v1 import moderations as v1_moderations
from ingress.v1 import relay as v1_relay
from ingress.web import keys, pages, signin, usage
from jobs import logs
from jobs.queue import JobQueue
from jobs.settings import Settings, get_settings, tune_gc
from storage.db import create_pool
from storage.redis_wire import packed_by_hiredis
from storage.secrets import SecretBox
from storage.status import StatusStore
from storage.task_batches import Tasks

ROUTES = [
    # The reference's API.
    Route("/chat-completion", chat.chat_completion, methods=["POST"]),
    Route("/chatgpt-completion", chat.chatgpt_completion, methods=["POST"]),
    Route("/prediction-status", tasks.prediction_status, methods=["GET"]),
    Route("/balance", accounts.balance, methods=["GET"]),
    Route("/api-keys", accounts.get_api_keys, methods=["GET"]),
    Route("/api-keys", accounts.post_api_keys, methods=["POST"]),
    Route("/tasks", tasks.list_tasks, methods=["GET"]),
    Route("/tasks/{id}", tasks.get_task, methods=["GET"]),
    Route("/tasks/{id}", tasks.delete_task, methods=["DELETE"]),
    Route("/generate", media.generate, methods=["POST"]),
    Route("/face-swap/run", media.face_swap, methods=["POST"]),
    Route("/face-swap/status", tasks.prediction_status, methods=["GET"]),
    Route("/billing-history", accounts.billing_history, methods=["GET"]),
    Route("/billing-threshold", billing.get_threshold, methods=["GET"]),
    Route("/billing-threshold", billing.post_threshold, methods=["POST"]),
    Route("/card", billing.get_card, methods=["GET"]),
    Route("/topup_card", billing.topup_card, methods=["POST"]),
    Route("/moderate", moderation.moderate, methods=["POST"]),
    Route("/", moderation.moderate, methods=["POST"]),
    # Added by the CONTRACT.
    Route("/accounts", accounts.post_accounts, methods=["POST"]),
    Route("/admin/credit", accounts.admin_credit, methods=["POST"]),
    Route("/healthz", health.healthz, methods=["GET"]),
    Route("/readyz", health.readyz, methods=["GET"]),
    Route("/metrics", metrics, methods=["GET"]),
    Route("/openapi.json", openapi, methods=["GET"]),
    Route("/tasks/{id}/cancel", cancel.cancel_task, methods=["POST"]),
    Route("/storage", storage_config.get_storage, methods=["GET"]),
    Route("/storage", storage_config.post_storage, methods=["POST"]),
    Route("/files/{path:path}", files.serve, methods=["GET"]),
    Route("/webhooks/replicate", webhooks.replicate, methods=["POST"]),
    # Billing with Stripe (issue 8).
    Route("/card/setup", billing.card_setup, methods=["POST"]),
    Route("/card", billing.post_card, methods=["POST"]),
    Route("/card", billing.delete_card, methods=["DELETE"]),
    Route("/webhooks/stripe", stripe_webhook, methods=["POST"]),
    Route("/webhook-secret", get_secret, methods=["GET"]),
    Route("/webhook-secret/rotate", rotate_secret, methods=["POST"]),
    Route("/tasks/{id}/deliveries", list_deliveries, methods=["GET"]),
    # OpenAI-compatible API (issue 10; errors in OpenAI's shape, ingress/errors.py).
    Route("/v1/chat/completions", v1_chat.chat_completions, methods=["POST"]),
    Route("/v1/tasks/{id}/stream", v1_relay.task_stream, methods=["GET"]),
    Route("/v1/models", v1_models.list_models, methods=["GET"]),
    Route("/v1/models/{model:path}", v1_models.retrieve_model, methods=["GET"]),
    Route("/v1/moderations", v1_moderations.moderations, methods=["POST"]),
    Route("/v1/embeddings", v1_embeddings.embeddings, methods=["POST"]),
    # Per-account limits (issue 11).
    Route("/admin/limits", post_limits, methods=["POST"]),
    Route("/admin/limits", get_limits, methods=["GET"]),
    # The web UI (issue 9): the JSON endpoints its pages need, then the pages and their assets.
    Route("/keys", keys.list_keys, methods=["GET"]),
    Route("/keys", keys.create_key, methods=["POST"]),
    Route("/keys/{prefix}", keys.revoke_key, methods=["DELETE"]),
    Route("/usage", usage.usage, methods=["GET"]),
    Route("/ui/signin", signin.signin, methods=["POST"]),
    Route("/ui/signup", signin.signup, methods=["POST"]),
    Route("/ui/signout", signin.signout, methods=["POST"]),
    Route("/", pages.home, methods=["GET"]),
    Route("/ui/signin", pages.signin, methods=["GET"]),
    Route("/ui/signup", pages.signup, methods=["GET"]),
    Route("/ui/tasks", pages.tasks, methods=["GET"]),
    Route("/ui/tasks/{id}", pages.task, methods=["GET"]),
    Route("/ui/keys", pages.keys, methods=["GET"]),
    Route("/ui/billing", pages.billing, methods=["GET"]),
    Route("/ui/playground", pages.playground, methods=["GET"]),
    Route("/ui/docs", pages.docs, methods=["GET"]),
    Mount("/static", app=pages.static, name="static"),
]


def create_app(settings: Settings | None = None) -> Starlette:
    settings = settings or get_settings()

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        assert settings.database_url and settings.redis_url, "DATABASE_URL and REDIS_URL must be set"
        db = await create_pool(settings.database_url, min_size=4, max_size=40)
        # The pool is bounded: beyond its size a request waits for a connection (then a 503), never
        # more connections. A Redis that is down answers 503 at once (refused), after the connect
        # timeout, or, when it takes connections and answers nothing, after the read timeout (our
        # blocking reads last a second at most). One retry on a fresh connection: after a Redis
        # restart the pool's idle connections are dead, and the first command on one must not fail
        # the request.
        redis = Redis.from_pool(packed_by_hiredis(BlockingConnectionPool.from_url(
            settings.redis_url, max_connections=settings.redis_max_connections,
            timeout=settings.redis_pool_timeout_seconds,
            socket_connect_timeout=settings.redis_connect_timeout_seconds,
            socket_timeout=settings.redis_read_timeout_seconds, socket_keepalive=True,
            retry=Retry(NoBackoff(), 1), retry_on_error=[RedisConnectionError])))
        queue = JobQueue(redis, settings.status_ttl_seconds)
        gateway = StripeGateway(settings) if settings.stripe_secret_key is not None else None
        app.state.sn = AppState(
            settings=settings, db=db, redis=redis,
            queue=queue,
            status=StatusStore(redis, settings.status_ttl_seconds),
            box=SecretBox(settings.master_key_value()),
            auth=Authenticator(settings, db, redis),
            tasks=Tasks(db),
            billing=Billing(settings, db, gateway, queue) if gateway is not None else None,
            replies=Replies(redis),
        )
        if settings.limits_enabled:
            app.state.sn.limiter = app.state.sn.auth.limiter = Limiter(settings, db, redis)
        app.state.sn.replies.start()
        tune_gc(settings)
        try:
            yield
        finally:
            await app.state.sn.replies.close()
            if gateway is not None:
                await gateway.aclose()
            await v1_models.close(app)
            await v1_feed.close(redis)
            await redis.aclose()
            await db.close()

    logs.setup(settings.log_format, settings.log_level)
    # Gateway: Starlette whose outermost layer is the access log, request id and request metrics.
    return Gateway(
        routes=ROUTES,
        exception_handlers=HANDLERS,
        lifespan=lifespan,
    )
