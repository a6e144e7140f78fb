"""Provider output made storable once, before anything is done with it.

A public Replicate model is code anyone can publish, and what it prints reaches us through the
stdlib JSON parser, which accepts what our encoder (orjson, for jsonb and the status hash) and
Postgres refuse: integers beyond 64 bits, lone surrogates, nesting up to the recursion limit.
Found only when the completion is written, such output used to fail after every file was
re-hosted, and the poll chain re-hosted again every few seconds until the deadline. So output
is normalised (or refused, which fails and refunds the task) before re-hosting starts.
"""

from __future__ import annotations

import re
from typing import Any

_INT_MIN, _INT_MAX = -(1 << 63), (1 << 64) - 1  # what orjson encodes
_SURROGATE = re.compile("[\ud800-\udfff]")


class OutputRefused(Exception):
    """The output cannot be delivered at all: the task fails (and is refunded) with this message."""


def _text(s: str) -> str:
    # U+0000 is refused by Postgres text and jsonb; a lone surrogate by UTF-8 itself.
    if "\x00" in s:
        s = s.replace("\x00", "\ufffd")
    if not s.isascii():
        s = _SURROGATE.sub("\ufffd", s)
    return s


def normalize_output(value: Any, max_depth: int = 64) -> Any:
    """``value`` as orjson and Postgres accept it: NUL and lone surrogates become U+FFFD,
    integers beyond 64 bits their decimal string. Nesting deeper than ``max_depth`` is refused
    (:class:`OutputRefused`): no real output is that deep, and cutting it would change its meaning."""

    def walk(v: Any, depth: int) -> Any:
        if isinstance(v, str):
            return _text(v)
        if isinstance(v, bool) or v is None or isinstance(v, float):
            return v
        if isinstance(v, int):
            if _INT_MIN <= v <= _INT_MAX:
                return v
            try:
                return str(v)
            except ValueError:  # past Python's 4300-digit conversion limit
                raise OutputRefused("The model's output holds an integer too long to store")
        if isinstance(v, (dict, list)):
            if depth >= max_depth:
                raise OutputRefused(f"The model's output is nested more than {max_depth} levels deep "
                                    "and cannot be stored")
            if isinstance(v, list):
                return [walk(x, depth + 1) for x in v]
            return {(_text(k) if isinstance(k, str) else k): walk(x, depth + 1) for k, x in v.items()}
        return v

    return walk(value, 0)
