"""The one place errors become responses: ``{"error": message}`` with the error's status.

Under ``/v1`` (the OpenAI-compatible API) the same errors take OpenAI's shape,
``{"error": {"message", "type", "param", "code"}}``, with the statuses the OpenAI SDKs map to
their exception classes; a short balance is 402 ``insufficient_quota`` (as OpenRouter answers).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

import asyncpg
from pydantic import ValidationError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Match, Route

from ingress.responses import JSON
from jobs.errors import BadRequest, InsufficientBalance, SyncNodeError, Unavailable

log = logging.getLogger("syncnode.ingress")


def describe_validation(exc: ValidationError) -> str:
    """The first problem, naming the field: what the client has to fix."""
    err = exc.errors()[0]
    loc = ".".join(str(p) for p in err["loc"] if p != "__root__")
    if err["type"] == "missing":
        return f"Missing {loc} parameter"
    msg = err["msg"].removeprefix("Value error, ")
    return f"Invalid {loc}: {msg}" if loc else msg


V1_PREFIX = "/v1/"
# OpenAI's error types by status (what its API sends, and what its SDKs expect).
_V1_TYPES = {400: "invalid_request_error", 401: "authentication_error", 402: "insufficient_quota",
             403: "permission_error", 404: "not_found_error", 405: "invalid_request_error",
             409: "conflict_error", 413: "invalid_request_error", 429: "rate_limit_exceeded"}


def is_v1(request: Request) -> bool:
    return request.url.path.startswith(V1_PREFIX)


def openai_error(status: int, message: str, code: str | None = None,
                 headers: Mapping[str, str] | None = None, extra: dict[str, object] | None = None,
                 param: str | None = None) -> Response:
    type_ = _V1_TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error")
    err = {"message": message, "type": type_, "param": param, "code": code or type_, **(extra or {})}
    return JSON({"error": err}, status_code=status, headers=headers)


async def syncnode_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, SyncNodeError)
    if is_v1(request):
        code = exc.code or ("insufficient_quota" if isinstance(exc, InsufficientBalance) else None)
        return openai_error(exc.status_code, exc.message, code, exc.headers, exc.extra, exc.param)
    return JSON(exc.body(), status_code=exc.status_code, headers=exc.headers)


def validation_param(exc: ValidationError) -> str | None:
    """The request field the first problem is in (OpenAI's ``error.param``: the SDKs show it)."""
    loc = [str(p) for p in exc.errors()[0]["loc"] if p != "__root__"]
    return loc[0] if loc else None


async def validation_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ValidationError)
    return await syncnode_error(request, BadRequest(describe_validation(exc), param=validation_param(exc)))


def allowed_methods(request: Request) -> str:
    """Every method served at this path: ROUTES has one Route per method, and Starlette's 405
    names only those of the first route whose path matched."""
    methods: set[str] = set()
    for route in request.app.routes:
        if isinstance(route, Route) and route.matches(request.scope)[0] != Match.NONE:
            methods |= route.methods or set()
    return ", ".join(sorted(methods))


async def http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    if exc.status_code == 405:
        exc.headers = {**(exc.headers or {}), "Allow": allowed_methods(request)}
    if is_v1(request):
        return openai_error(exc.status_code, str(exc.detail), headers=exc.headers)
    return JSON({"error": exc.detail}, status_code=exc.status_code, headers=exc.headers)


async def server_error(request: Request, exc: Exception) -> Response:
    log.exception("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    if is_v1(request):
        return openai_error(500, "Internal server error")
    return JSON({"error": "Internal server error"}, status_code=500)


# Postgres or Redis down (a restart, a failover): 503 with Retry-After, which clients retry,
# instead of a 500 with a traceback. The money statements are single statements, so a request
# that failed here was either charged with its task recorded or not charged at all; submit
# (ingress/submit.py) undoes a charge whose enqueue failed before it answers 503.
_POSTGRES_DOWN = (asyncpg.PostgresConnectionError, asyncpg.InterfaceError, asyncpg.exceptions.OperatorInterventionError)
_REDIS_DOWN = (RedisConnectionError, RedisTimeoutError)


async def dependency_down(request: Request, exc: Exception) -> Response:
    what = "The queue (Redis)" if isinstance(exc, _REDIS_DOWN) else "The database"
    log.warning("%s %s: %s unavailable: %s: %s", request.method, request.url.path, what, type(exc).__name__, exc)
    return await syncnode_error(request, Unavailable(f"{what} is unavailable right now; retry shortly",
                                                     headers={"Retry-After": "1"}))


HANDLERS = {
    SyncNodeError: syncnode_error,
    ValidationError: validation_error,
    HTTPException: http_error,
    **{cls: dependency_down for cls in (*_POSTGRES_DOWN, *_REDIS_DOWN, ConnectionError)},
    Exception: server_error,
}
