"""Liveness and readiness."""

from __future__ import annotations

import asyncio

from starlette.requests import Request
from starlette.responses import Response

from ingress.api_models import Health, Ready
from ingress.api_spec import api
from ingress.responses import JSON
from ingress.state import state


@api("Liveness", tags=("operations",), auth="none", ok={200: Health}, errors=())
async def healthz(request: Request) -> Response:
    return JSON({"status": "ok"})


@api("Readiness: Postgres and Redis reachable", tags=("operations",), auth="none", ok={200: Ready, 503: Ready},
     errors=())
async def readyz(request: Request) -> Response:
    st = state(request)
    checks: dict[str, str] = {}

    async def pg() -> None:
        await st.db.fetchval("SELECT 1")

    async def rd() -> None:
        await st.redis.ping()

    for name, probe in (("postgres", pg), ("redis", rd)):
        try:
            await asyncio.wait_for(probe(), 2.0)
            checks[name] = "ok"
        except Exception as e:
            checks[name] = f"error: {type(e).__name__}"
    ok = all(v == "ok" for v in checks.values())
    return JSON({"status": "ok" if ok else "unavailable", **checks}, status_code=200 if ok else 503)
