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
