"""Measurements → the reference's response shape, with a ``coverage`` object that says what
was measured. An unmeasured category reads 0 and is listed as unscored; ``safe`` and the
flags come from measured categories only."""

from __future__ import annotations

from typing import Any

from workers.moderation.categories import CATEGORIES, FLAGS, IMAGE_KEYS, VULGAR, Measured, Thresholds


def _flags(kind: str, m: Measured, th: Thresholds) -> dict[str, int | None]:
    """Each flag: 0/1 when its source category was measured, None when it was not."""
    s = m.scores

    def over(cat: str, limit: float) -> int | None:
        return int(s[cat] >= limit) if cat in s else None

    # Nudity is a property of pictures: a sexual *text* score says nothing about nudity.
    return {"nudity": over("sexual", th.nudity) if kind == "image" else None,
            "underage": over("sexual/minors", th.underage),
            "vulgar": over(VULGAR, th.vulgar)}


def section(kind: str, m: Measured, backend: str, th: Thresholds) -> dict[str, Any]:
    base = CATEGORIES if kind == "text" else IMAGE_KEYS
    keys = list(base) + [k for k in CATEGORIES + (VULGAR,) if k in m.scores and k not in base]
    flags = _flags(kind, m, th)
    flagged = any(v == 1 for v in flags.values())
    over_threshold = any(v >= th.category for k, v in m.scores.items() if k in CATEGORIES)
    # "vulgar" is both a score and a flag: listed once.
    scored = dict.fromkeys([k for k in keys if k in m.scores] + [f for f in FLAGS if flags[f] is not None])
    unscored = dict.fromkeys([k for k in keys if k not in m.scores] + [f for f in FLAGS if flags[f] is None])
    coverage: dict[str, Any] = {
        "backend": backend,
        "scored": list(scored),
        "unscored": list(unscored),
        "sources": {k: m.sources[k] for k in keys if k in m.sources},
    }
    if m.joint:
        coverage["joint"] = [k for k in keys if k in m.joint]
    return {
        "scores": {k: m.scores.get(k, 0) for k in keys},
        "nudity": flags["nudity"] or 0, "underage": flags["underage"] or 0, "vulgar": flags["vulgar"] or 0,
        "safe": int(not (flagged or over_threshold)),
        "coverage": coverage,
    }


def response(text: Measured | None, image: Measured | None, backend: str, th: Thresholds) -> dict[str, Any]:
    """``text_moderation`` / ``image_moderation`` for the inputs sent, and ``overall_moderation``."""
    out: dict[str, Any] = {}
    sections = []
    if text is not None:
        out["text_moderation"] = section("text", text, backend, th)
        sections.append(out["text_moderation"])
    if image is not None:
        out["image_moderation"] = section("image", image, backend, th)
        sections.append(out["image_moderation"])
    scored = {f for s in sections for f in s["coverage"]["scored"] if f in FLAGS}
    overall: dict[str, Any] = {f: max(s[f] for s in sections) for f in FLAGS}
    overall["safe"] = min(s["safe"] for s in sections)
    overall["coverage"] = {"backend": backend, "scored": [f for f in FLAGS if f in scored],
                           "unscored": [f for f in FLAGS if f not in scored]}
    out["overall_moderation"] = overall
    return out
