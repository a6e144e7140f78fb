"""A webhook receiver on 127.0.0.1: records every request and answers as a test scripts it.

``POST /hook/<name>``: each request takes the next step of ``SCRIPTS[name]`` (then 200): an HTTP
status code, or ``(seconds, code)`` to answer after sleeping that long. ``CALLS`` keeps each
request (name, headers, body, when it arrived and when it was answered).
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

Step = int | tuple[float, int]

SCRIPTS: dict[str, list[Step]] = {}
CALLS: list[dict[str, Any]] = []


async def hook(request: Request) -> Response:
    name = request.path_params["name"]
    call: dict[str, Any] = {"name": name, "headers": dict(request.headers), "body": await request.body(),
                            "arrived": time.monotonic(), "answered": None}
    CALLS.append(call)
    steps = SCRIPTS.get(name) or []
    step: Step = steps.pop(0) if steps else 200
    delay, code = (step if isinstance(step, tuple) else (0.0, step))
    if delay:
        await asyncio.sleep(delay)
    call["answered"] = time.monotonic()
    return Response(b"ok" if code < 400 else b"no", status_code=code,
                    headers={"location": "https://elsewhere.test/"} if 300 <= code < 400 else None)


def calls(name: str) -> list[dict[str, Any]]:
    return [c for c in CALLS if c["name"] == name]


app = Starlette(routes=[Route("/hook/{name}", hook, methods=["POST"])])
