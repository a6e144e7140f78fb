"""Local text model: alt-profanity-check (MIT; a TF-IDF + linear SVM trained on labelled
offensive language, shipped inside the wheel). Its one output, P(offensive), is the `vulgar`
signal; it also fires on hateful or gory wording, so it is not passed off as any other
category (docs/moderation.md)."""

from __future__ import annotations

import importlib
import importlib.metadata
import re
import threading
from functools import lru_cache
from typing import Any

_SPLIT = re.compile(r"(?<=[.!?])\s+|\n+")
_MAX_PIECES = 256
_lock = threading.Lock()


@lru_cache(maxsize=1)
def version() -> str:
    return f"alt-profanity-check {importlib.metadata.version('alt-profanity-check')}"


@lru_cache(maxsize=1)
def _model() -> Any:
    # The package unpickles its model at import: once per process, from the wheel, no network.
    with _lock:
        return importlib.import_module("profanity_check")


def load() -> None:
    _model().predict_prob(["warm up"])


def pieces(text: str) -> list[str]:
    """The whole text and its sentences: a bag-of-words model dilutes one insult in a long text."""
    parts = [p.strip() for p in _SPLIT.split(text) if p and p.strip()]
    if len(parts) > _MAX_PIECES:
        size = -(-len(parts) // _MAX_PIECES)
        parts = [" ".join(parts[i:i + size]) for i in range(0, len(parts), size)]
    return [text, *parts] if len(parts) > 1 else [text]


def offensive(text: str) -> float:
    """P(offensive) of the worst sentence; blocking (run it in a thread)."""
    if not text.strip():
        return 0.0
    probs = _model().predict_prob(pieces(text))
    return float(max(probs))
