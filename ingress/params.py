"""Query parameters, validated with messages that name them."""

from __future__ import annotations

from starlette.requests import Request

from jobs.errors import BadRequest


def int_param(request: Request, name: str, default: int, lo: int, hi: int) -> int:
    raw = request.query_params.get(name)
    if raw is None:
        return default
    try:
        v = int(raw)
    except ValueError:
        raise BadRequest(f"Invalid {name}: must be an integer")
    if not lo <= v <= hi:
        raise BadRequest(f"Invalid {name}: must be between {lo} and {hi}")
    return v


def text_param(request: Request, name: str) -> str | None:
    """A query parameter as text; 400 if it holds U+0000 (Postgres text cannot, as for bodies)."""
    raw = request.query_params.get(name)
    if raw is not None and "\x00" in raw:
        raise BadRequest(f"Invalid {name}: contains a NUL character (\\u0000)")
    return raw
