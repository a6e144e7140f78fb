"""Reading a request body with a size cap enforced while it streams in."""

from __future__ import annotations

from typing import Any

import orjson
from starlette.requests import Request

from jobs.errors import BadRequest, PayloadTooLarge


async def read_bytes(request: Request, limit: int, what: str = "Request body") -> bytes:
    """The body, refused with 413 as soon as it passes ``limit`` (declared or streamed)."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(f"{what} is larger than {limit} bytes")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"{what} is larger than {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


async def read_json(request: Request, limit: int) -> dict[str, Any]:
    raw = await read_bytes(request, limit)
    if not raw.strip():
        raise BadRequest("Request body is empty: send a JSON object")
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise BadRequest("Request body is not valid JSON")
    if not isinstance(data, dict):
        raise BadRequest("Request body must be a JSON object")
    if b"\\u0000" in raw:
        where = _nul_path(data)
        if where is not None:
            # Postgres text and jsonb cannot hold U+0000; refuse it here rather than fail later.
            raise BadRequest(f"Invalid {where or 'body'}: contains a NUL character (\\u0000)")
    return data


def _nul_path(value: Any, path: str = "") -> str | None:
    """The dotted path of the first string (or key) holding U+0000, or None."""
    if isinstance(value, str):
        return path if "\x00" in value else None
    if isinstance(value, dict):
        for k, v in value.items():
            sub = f"{path}.{k}" if path else str(k)
            if "\x00" in str(k):
                return sub
            found = _nul_path(v, sub)
            if found is not None:
                return found
    if isinstance(value, list):
        for i, v in enumerate(value):
            found = _nul_path(v, f"{path}[{i}]")
            if found is not None:
                return found
    return None
