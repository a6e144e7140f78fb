"""OpenAI's omni-moderation: text and image scored in one request (text + image_url parts),
its one result mapped onto our sections by ``category_applied_input_types``."""

from __future__ import annotations

import base64
from dataclasses import dataclass
from typing import Any

import httpx

from workers.moderation.categories import CATEGORIES, IMAGE_CAPABLE, Measured
from workers.providers.errors import ProviderRetryable
from workers.providers.http import classify

PROVIDER = "OpenAI"


@dataclass(frozen=True, slots=True)
class Image:
    data: bytes
    mime: str


def request_body(model: str, text: str | None, image: Image | None) -> dict[str, Any]:
    parts: list[dict[str, Any]] = []
    if text is not None:
        parts.append({"type": "text", "text": text})
    if image is not None:
        # A data URL: OpenAI never fetches a user's URL, and sees the very bytes we checked.
        url = f"data:{image.mime};base64,{base64.b64encode(image.data).decode()}"
        parts.append({"type": "image_url", "image_url": {"url": url}})
    return {"model": model, "input": parts}


async def moderate(client: httpx.AsyncClient, key: str, model: str, text: str | None,
                   image: Image | None) -> dict[str, Any]:
    """One exchange; raises ProviderError (the retry loop is the caller's)."""
    resp = await client.post("/moderations", json=request_body(model, text, image),
                             headers={"Authorization": f"Bearer {key}"})
    classify(PROVIDER, resp)
    try:
        data = resp.json()
        result = data["results"][0]
        if not isinstance(result.get("category_scores"), dict):
            raise TypeError("no category_scores")
    except (ValueError, KeyError, IndexError, TypeError, AttributeError) as e:
        raise ProviderRetryable(PROVIDER, f"unexpected moderation response ({e})", resp.status_code)
    return dict(result, model=data.get("model", model))


def split(result: dict[str, Any], text_sent: bool,
          image_sent: bool) -> tuple[Measured | None, Measured | None]:
    """OpenAI's combined result → what it measured on the text and on the image.

    A category counts as measured on an input only if OpenAI says it applied it to that input
    type; with both inputs, a category applied to both has one score for both (``joint``).
    """
    source = f"openai {result.get('model', 'omni-moderation')}"
    text = Measured() if text_sent else None
    image = Measured() if image_sent else None
    applied_all: dict[str, Any] = result.get("category_applied_input_types") or {}
    scores: dict[str, Any] = result["category_scores"]
    for cat in CATEGORIES:
        if not isinstance(scores.get(cat), int | float):
            continue
        applied = applied_all.get(cat)
        if not isinstance(applied, list):  # an older response without the field: OpenAI's docs
            applied = ["text"] if text_sent else []
            if image_sent and cat in IMAGE_CAPABLE:
                applied.append("image")
        on_text, on_image = text is not None and "text" in applied, image is not None and "image" in applied
        for m, on in ((text, on_text), (image, on_image)):
            if m is not None and on:
                m.add(cat, scores[cat], source)
                if on_text and on_image:
                    m.joint.add(cat)
    return text, image
