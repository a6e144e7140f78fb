"""JSON (not pickle) for every job and result, so ``redis-cli GET arq:job:<id>`` is readable."""

from __future__ import annotations

from typing import Any

import orjson


def _default(obj: Any) -> Any:
    # arq stores exceptions as results; str() keeps them JSON (our tasks never raise, see workers).
    return str(obj)


def dumps(obj: Any) -> bytes:
    return orjson.dumps(obj, default=_default)


def loads(data: bytes | str) -> Any:
    return orjson.loads(data)
