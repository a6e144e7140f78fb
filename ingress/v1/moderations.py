"""POST /v1/moderations: our moderation backends (the moderation pool, through the spine) in
OpenAI's response shape, plus our honest ``coverage``: which categories were really measured,
by which backend. A category no backend measured reads 0 / false and is listed as unscored.

``input`` is a string, a list of strings (one result, and one charge, each), or OpenAI's list of
multimodal parts (``text`` and at most one ``image_url``: one result).
"""

from __future__ import annotations

import asyncio
import hashlib
from dataclasses import dataclass
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, field_validator
from starlette.requests import Request
from starlette.responses import Response

from ingress.api_models import V1Moderations
from ingress.api_spec import IDEMPOTENCY, PAID, api
from ingress.auth import Principal
from ingress.body import read_json
from ingress.hooks import WebhookTarget, checked_webhook, pop_webhook_fields
from ingress.moderation import ModerationRequest, load_image, task_request
from ingress.responses import JSON
from ingress.state import AppState, state
from ingress.submit import Submitted, body_hash, ensure_can_pay, paid_work, refusal, replay, submit
from ingress.v1.answer import timed_out
from jobs import keys
from jobs.errors import BadRequest, SyncNodeError
from jobs.names import MODERATION
from storage.tasks import TaskRepository

MAX_INPUTS = 32
# OpenAI's omni-moderation categories: every result names all of them, as OpenAI's does.
CATEGORIES = ("harassment", "harassment/threatening", "hate", "hate/threatening", "illicit", "illicit/violent",
              "self-harm", "self-harm/intent", "self-harm/instructions", "sexual", "sexual/minors", "violence",
              "violence/graphic")


SHAPES = "must be a string, a list of strings, or a list of content parts (objects of type 'text' or 'image_url')"


def _one_shape(v: Any) -> bool:
    """A string, or a list all of strings or all of objects: what the union's branches would
    otherwise reject with a message naming a branch ("input.constrained-str")."""
    if isinstance(v, str):
        return True
    return isinstance(v, list) and (all(isinstance(i, str) for i in v) or all(isinstance(i, dict) for i in v))


class ModerationsRequest(BaseModel):
    model_config = ConfigDict(extra="allow")

    input: (Annotated[str, Field(min_length=1)] | Annotated[list[str], Field(min_length=1, max_length=MAX_INPUTS)]
            | Annotated[list[dict[str, Any]], Field(min_length=1)])

    @field_validator("input", mode="before")
    @classmethod
    def _size(cls, v: Any) -> Any:
        # Before the union: its own messages would name a branch ("constrained-str"), not the problem.
        if v == "" or v == []:
            raise ValueError("input must not be empty")
        if not _one_shape(v):
            raise ValueError(SHAPES)
        if isinstance(v, list) and len(v) > MAX_INPUTS and all(isinstance(i, str) for i in v):
            raise ValueError(f"at most {MAX_INPUTS} strings per request")
        return v
    model: str | None = None


def _parts(parts: list[dict[str, Any]]) -> ModerationRequest:
    if any(p.get("type") not in ("text", "image_url") for p in parts):
        raise BadRequest("Invalid input: a content part's type must be 'text' or 'image_url'")
    if any(p.get("type") == "text" and not isinstance(p.get("text"), str) for p in parts):
        raise BadRequest("Invalid input: a text part needs a 'text' string")
    texts = [p["text"] for p in parts if p.get("type") == "text"]
    images = [p.get("image_url") for p in parts if p.get("type") == "image_url"]
    if not any(texts) and not images:
        raise BadRequest("Invalid input: send a non-empty text part or an image_url part")
    if len(images) > 1:
        raise BadRequest("Invalid input: at most one image_url part per input")
    url = None
    if images:
        img = images[0]
        url = img.get("url") if isinstance(img, dict) else img
        if not isinstance(url, str) or not url:
            raise BadRequest("Invalid input: image_url needs a url")
    if url and url.startswith("data:"):
        return ModerationRequest(text="\n".join(texts) or None, imageBase64=url)
    return ModerationRequest(text="\n".join(texts) or None, imageUrl=url)


def inputs(req: ModerationsRequest) -> list[ModerationRequest]:
    if isinstance(req.input, str):
        return [ModerationRequest(text=req.input)]
    if all(isinstance(i, dict) for i in req.input):
        return [_parts(req.input)]  # type: ignore[arg-type]
    if len(req.input) > MAX_INPUTS:
        raise BadRequest(f"Invalid input: at most {MAX_INPUTS} strings per request")
    if not all(req.input):
        raise BadRequest("Invalid input: a string in the list is empty")
    return [ModerationRequest(text=str(i)) for i in req.input]


def result(output: dict[str, Any], th: float, underage: float) -> dict[str, Any]:
    """Our moderation answer → one OpenAI ``results[]`` item (a category's score is the highest
    over text and image; applied input types name which of them measured it)."""
    scores = dict.fromkeys(CATEGORIES, 0.0)
    applied: dict[str, list[str]] = {c: [] for c in CATEGORIES}
    coverage: dict[str, Any] = {}
    for kind in ("text", "image"):
        sec = output.get(f"{kind}_moderation")
        if not sec:
            continue
        coverage[kind] = sec.get("coverage")
        scored = set((sec.get("coverage") or {}).get("scored") or [])
        for c, v in (sec.get("scores") or {}).items():
            if c in scores and c in scored:
                scores[c] = max(scores[c], float(v))
                applied[c].append(kind)
    cats = {c: scores[c] >= (underage if c == "sexual/minors" else th) for c in CATEGORIES}
    return {"flagged": any(cats.values()), "categories": cats, "category_scores": scores,
            "category_applied_input_types": applied, "coverage": coverage}


@dataclass(frozen=True, slots=True)
class Idempotency:
    """One input's share of the request's Idempotency-Key: each input is a task of its own."""
    key: str
    request_hash: bytes


def idempotency(key: str | None, body: dict[str, Any], hook: WebhookTarget | None,
                n: int) -> list[Idempotency | None]:
    """The first input takes the key as sent (so reusing it on another route is a 409, as
    everywhere), the others a key derived from it; every hash covers the whole request and the
    input's place in it, so another body under the same key is a 409 whichever input is compared."""
    if key is None:
        return [None] * n
    return [Idempotency(key if i == 0 else f"{key}#{i}", body_hash(MODERATION, {"body": body, "input": i}, hook))
            for i in range(n)]


async def _one(st: AppState, who: Principal, m: ModerationRequest, calls: int,
               hook: WebhookTarget | None, idem: Idempotency | None) -> dict[str, Any]:
    sub = None if idem is None else await replay(st, who, idem.key, idem.request_hash, wait=True)
    if sub is None:
        sub = await _submit(st, who, m, calls, hook, idem)
    if sub.result is None:
        raise timed_out(sub.job_id, sub.task_id)
    output = sub.result.raise_for_failure(sub.job_id).output
    s = st.settings
    model = sub.result.model or _model(st)
    return {"job_id": sub.job_id, "model": model,
            **result(output, s.moderation_category_threshold, s.moderation_underage_threshold)}


def _model(st: AppState) -> str:
    return st.settings.moderation_openai_model if st.settings.moderation_openai_key else "local"


async def _submit(st: AppState, who: Principal, m: ModerationRequest, calls: int,
                  hook: WebhookTarget | None, idem: Idempotency | None) -> Submitted:
    img = None
    if m.imageUrl or m.imageBase64:
        # Image work before the charge: for no more of the account's requests than it can pay for.
        async with paid_work(st, who, calls):
            try:
                img = await load_image(st, m)
            except SyncNodeError as e:
                # Shared with POST /moderate, whose fields these messages name; the caller sent image_url.
                e.message = e.message.replace("imageBase64", "image_url").replace("imageUrl", "image_url")
                raise
    digest = hashlib.sha256(img.data).hexdigest() if img is not None else None

    async def store_blob() -> None:
        # After the charge, as POST /moderate does: an account that cannot pay pins nothing.
        assert img is not None and digest is not None
        await st.redis.set(keys.blob(digest), img.data, ex=st.settings.moderation_blob_ttl_seconds)

    return await submit(st, who, MODERATION, model=_model(st), prompt=(m.text or m.imageUrl or "[image]")[:500],
                        request=task_request(m, img, digest), wait=True,
                        idempotency_key=idem.key if idem else None, request_hash=idem.request_hash if idem else None,
                        prepare=store_blob if img is not None else None, webhook=hook)


@api("Our moderation backends in OpenAI's shape, with their honest coverage", tags=("v1",), auth="bearer",
     body=ModerationsRequest, webhooks=True, headers=IDEMPOTENCY, ok={200: V1Moderations}, errors=PAID)
async def moderations(request: Request) -> Response:
    st = state(request)
    # The credential, then whether the account can pay, from the headers: nothing read before.
    who = await st.auth.principal(request, None, public=False)
    key = request.headers.get("idempotency-key")
    # A replay is answered from its tasks (or refused, 409) whatever the balance is now.
    replaying = key is not None and await TaskRepository(st.db).by_idempotency_key(who.uid, key) is not None
    calls = 1 if replaying else await ensure_can_pay(st, who, MODERATION, None)
    body = await read_json(request, st.settings.max_media_body_bytes)
    hook_fields = pop_webhook_fields(body)
    req = ModerationsRequest.model_validate(body)
    hook = await checked_webhook(st, who.uid, calls, hook_fields)
    items = inputs(req)
    if len(items) > calls and not replaying:  # one charge per input: all of them must be covered
        price = MODERATION.price_micros(st.settings)
        raise refusal(MODERATION, price * len(items), account_exists=True, has_key=True)
    idems = idempotency(key, body, hook, len(items))
    done = await asyncio.gather(*(_one(st, who, m, calls, hook, i) for m, i in zip(items, idems, strict=True)))
    return JSON({"id": f"modr-{done[0]['job_id']}", "model": done[0]["model"],
                 "results": [{k: v for k, v in d.items() if k not in ("job_id", "model")} for d in done]})
