"""JSON (not pickle) for every job and result, so ``redis-cli GET arq:job:<id>`` is readable."""

from __future__ import annotations

from typing import Any

import orjson


def _default(obj: Any) -> Any:
    # arq stores exceptions as results; text keeps them JSON (our tasks never raise, see workers).
    # With the class name: a timeout's str() is empty, and a dead letter must say what happened.
    if isinstance(obj, BaseException):
        return f"{type(obj).__name__}: {obj}" if str(obj) else type(obj).__name__
    return str(obj)


def dumps(obj: Any) -> bytes:
    return orjson.dumps(obj, default=_default)


def loads(data: bytes | str) -> Any:
    return orjson.loads(data)
