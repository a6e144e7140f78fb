"""The outermost layer of the ingress: a request id, the request metrics and one access line.

It wraps Starlette's own error middleware, so a request that ended in an unhandled 500 is
counted, logged and answered with its ``X-Request-Id`` like any other. uvicorn's access log is
off (``--no-access-log``): this line has what it lacks (route template, duration, request id, uid).
"""

from __future__ import annotations

import logging
import time

from starlette.applications import Starlette
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ingress.metrics import LATENCY, REQUESTS
from jobs.logs import REQUEST_ID, UID, accept_request_id

log = logging.getLogger("syncnode.access")

# Probes and scrapes arrive every few seconds from machines: logged at DEBUG, not INFO.
_QUIET_ROUTES = frozenset({"/healthz", "/readyz", "/metrics"})


def _header(scope: Scope, name: bytes) -> str | None:
    for k, v in scope["headers"]:
        if k == name:
            return str(v.decode("latin-1"))
    return None


class AccessLog:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        rid = accept_request_id(_header(scope, b"x-request-id"))
        tokens = REQUEST_ID.set(rid), UID.set(None)
        start = time.perf_counter()
        status = 500
        header = (b"x-request-id", rid.encode())

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", ()), header]
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            elapsed = time.perf_counter() - start
            route = getattr(scope.get("route"), "path", "unmatched")
            method = scope["method"]
            REQUESTS.labels(route, method, str(status)).inc()
            LATENCY.labels(route).observe(elapsed)
            ms = round(elapsed * 1000, 2)
            log.log(logging.DEBUG if route in _QUIET_ROUTES else logging.INFO,
                    "%s %s %d in %.1f ms", method, route, status, ms,
                    extra={"method": method, "route": route, "status": status, "duration_ms": ms})
            REQUEST_ID.reset(tokens[0])
            UID.reset(tokens[1])


class Gateway(Starlette):
    """Starlette with ``AccessLog`` outside its error middleware (user middleware sits inside it)."""

    def build_middleware_stack(self) -> ASGIApp:
        return AccessLog(super().build_middleware_stack())
