"""A fake of OpenAI's moderation endpoint (POST /v1/moderations) on its real wire format:
one result for a multimodal input, 13 categories with booleans, scores and the input types
each was applied to. Scores follow keywords so a test needs no side channel:
  "kill"      violence 0.93, harassment/threatening 0.71
  "fail-500"  every call answers 500
Every call is recorded (``GET /_calls``)."""

from __future__ import annotations

from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from workers.moderation.categories import CATEGORIES, IMAGE_CAPABLE

CALLS: list[dict[str, Any]] = []


async def moderations(request: Request) -> Response:
    body = await request.json()
    CALLS.append({"auth": request.headers.get("authorization"), "body": body})
    parts = body["input"] if isinstance(body["input"], list) else [{"type": "text", "text": body["input"]}]
    text = " ".join(p["text"] for p in parts if p.get("type") == "text")
    has_text = any(p.get("type") == "text" for p in parts)
    has_image = any(p.get("type") == "image_url" for p in parts)
    if "fail-500" in text:
        return JSONResponse({"error": {"message": "The server had an error", "type": "server_error",
                                       "param": None, "code": None}}, status_code=500)
    scores = {c: 0.00001 for c in CATEGORIES}
    if "kill" in text:
        scores.update({"violence": 0.93, "harassment/threatening": 0.71})
    if has_image:
        scores.update({"sexual": 0.0002, "violence/graphic": 0.0004})
    applied = {c: (["text"] if has_text else []) + (["image"] if has_image and c in IMAGE_CAPABLE else [])
               for c in CATEGORIES}
    for c in CATEGORIES:
        if not applied[c]:
            scores[c] = 0.0  # as OpenAI does for a category not applied to any input
    categories = {c: scores[c] >= 0.5 for c in CATEGORIES}
    return JSONResponse({
        "id": "modr-0d6b6a5f1f9c4e0b", "model": "omni-moderation-2024-09-26",
        "results": [{"flagged": any(categories.values()), "categories": categories,
                     "category_scores": scores, "category_applied_input_types": applied}],
    })


async def calls(request: Request) -> Response:
    return JSONResponse(CALLS)


app = Starlette(routes=[Route("/v1/moderations", moderations, methods=["POST"]), Route("/_calls", calls)])
