"""The one place errors become responses: ``{"error": message}`` with the error's status."""

from __future__ import annotations

import logging

from pydantic import ValidationError
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response

from ingress.responses import JSON
from jobs.errors import BadRequest, SyncNodeError

log = logging.getLogger("syncnode.ingress")


def describe_validation(exc: ValidationError) -> str:
    """The first problem, naming the field: what the client has to fix."""
    err = exc.errors()[0]
    loc = ".".join(str(p) for p in err["loc"] if p != "__root__")
    if err["type"] == "missing":
        return f"Missing {loc} parameter"
    msg = err["msg"].removeprefix("Value error, ")
    return f"Invalid {loc}: {msg}" if loc else msg


async def syncnode_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, SyncNodeError)
    return JSON(exc.body(), status_code=exc.status_code, headers=exc.headers)


async def validation_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ValidationError)
    return await syncnode_error(request, BadRequest(describe_validation(exc)))


async def http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    return JSON({"error": exc.detail}, status_code=exc.status_code, headers=exc.headers)


async def server_error(request: Request, exc: Exception) -> Response:
    log.exception("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    return JSON({"error": "Internal server error"}, status_code=500)


HANDLERS = {
    SyncNodeError: syncnode_error,
    ValidationError: validation_error,
    HTTPException: http_error,
    Exception: server_error,
}
