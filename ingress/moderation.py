"""POST /moderate and POST / (the reference's moderation host answers at its root).

Everything that can refuse a request happens here, before the charge, cheapest first: the
credential (headers only), the body and its fields, whether the account can pay, then the image
(fetched behind the SSRF guard, or base64-decoded; its header, then a bounded decode). Only then
is the call charged, the image stored for the worker and the job queued; the moderation pool
runs the models, the request waits.
"""

from __future__ import annotations

import hashlib
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from starlette.requests import Request
from starlette.responses import Response

from ingress.admission import Admitted, admit
from ingress.api_models import Accepted, ModerationAnswer
from ingress.api_spec import IDEMPOTENCY, PAID, PREFER, api
from ingress.chat import accepted, wants_async
from ingress.image_input import (
    BASE64_PATTERN,
    MIME_PATTERN,
    ImageBytes,
    check_decodes,
    decode_base64,
    decode_limits,
    from_fetched,
    normalize_mime,
)
from ingress.responses import JSON
from ingress.state import AppState, state
from ingress.submit import Submitted, paid_work, replay, status_url, submit
from jobs import keys
from jobs.errors import BadRequest, GatewayTimeout
from jobs.names import MODERATION
from storage.egress import FetchPolicy, fetch

MAX_TEXT_CHARS = 100_000


def _given(name: str) -> dict[str, Any]:
    return {"required": [name], "properties": {name: {"type": "string", "minLength": 1}}}


class ModerationRequest(BaseModel):
    # What _something enforces, for /openapi.json: one of the three, and never both images.
    model_config = ConfigDict(json_schema_extra={
        "anyOf": [_given("text"), _given("imageUrl"), _given("imageBase64")],
        "not": {"allOf": [_given("imageUrl"), _given("imageBase64")]},
    })

    uid: str | None = None
    text: str | None = Field(None, max_length=MAX_TEXT_CHARS)
    # The reference's field names. An URL is fetched behind the SSRF guard (http or https only).
    imageUrl: str | None = Field(None, max_length=8192, json_schema_extra={"pattern": "^[Hh][Tt][Tt][Pp][Ss]?://"})
    imageBase64: str | None = Field(None, json_schema_extra={
        "pattern": BASE64_PATTERN, "contentEncoding": "base64", "contentMediaType": "image/*"})
    imageMime: str | None = Field(None, max_length=100, json_schema_extra={"pattern": MIME_PATTERN})

    @field_validator("imageMime")
    @classmethod
    def _mime(cls, v: str | None) -> str | None:
        # Checked even without an image: the document says which values it takes, always.
        if v is not None:
            try:
                normalize_mime(v)
            except BadRequest as e:
                raise ValueError(e.message)
        return v

    @model_validator(mode="after")
    def _something(self) -> ModerationRequest:
        if not self.text and not self.imageUrl and not self.imageBase64:
            raise ValueError("send at least one of text, imageUrl or imageBase64")
        if self.imageUrl and self.imageBase64:
            raise ValueError("send one image: imageUrl or imageBase64, not both")
        return self


def fetch_policy(st: AppState) -> FetchPolicy:
    s = st.settings
    return FetchPolicy(allow=s.fetch_allow_list, max_bytes=s.moderation_max_image_bytes,
                       max_redirects=s.fetch_max_redirects, connect_timeout=s.fetch_connect_timeout_seconds,
                       total_timeout=s.fetch_timeout_seconds)


async def load_image(st: AppState, req: ModerationRequest) -> ImageBytes | None:
    s = st.settings
    if req.imageBase64:
        img = decode_base64(req.imageBase64, req.imageMime, s.moderation_max_image_bytes)
    elif req.imageUrl:
        if req.imageMime:
            normalize_mime(req.imageMime)  # a bad value is still an error, though the bytes decide
        img = from_fetched((await fetch(req.imageUrl, fetch_policy(st), what="imageUrl")).body)
    else:
        return None
    await check_decodes(img, decode_limits(s, s.moderation_max_image_pixels))
    return img


def task_request(req: ModerationRequest, img: ImageBytes | None, digest: str | None) -> dict[str, Any]:
    """What the task row keeps: the text and the image's identity, never its megabytes."""
    out: dict[str, Any] = {}
    if req.text:
        out["text"] = req.text
    if img is not None:
        out["image"] = {"sha256": digest, "mime": img.mime, "bytes": len(img.data),
                        "source": "url" if req.imageUrl else "base64"}
        if req.imageUrl:
            out["image"]["url"] = req.imageUrl
    return out


@api("Moderate text and/or an image ($0.01); local models unless the operator set an OpenAI key",
     tags=("moderation",), auth="bearer", body=ModerationRequest, webhooks=True, headers={**PREFER, **IDEMPOTENCY},
     ok={200: ModerationAnswer, 202: Accepted}, errors=PAID)
async def moderate(request: Request) -> Response:
    st = state(request)
    a = await admit(request, MODERATION, ModerationRequest)
    wait = not wants_async(request)
    sub = await replay(st, a.who, a.idempotency_key, a.request_hash, wait)
    if sub is None:
        sub = await _run(st, a, wait)
    return _answer(st, sub, wait)


async def _run(st: AppState, a: Admitted[ModerationRequest], wait: bool) -> Submitted:
    who, req = a.who, a.req
    # Fetching, decoding and storing an image are work: only for a caller who can pay for it,
    # and for no more of their requests at once than their balance pays for.
    async with paid_work(st, who, a.calls):
        img = await load_image(st, req)
    digest = hashlib.sha256(img.data).hexdigest() if img is not None else None

    async def store_blob() -> None:
        # By content: a retried or repeated image is one key; the TTL bounds what Redis holds.
        assert img is not None and digest is not None
        await st.redis.set(keys.blob(digest), img.data, ex=st.settings.moderation_blob_ttl_seconds)

    model = st.settings.moderation_openai_model if st.settings.moderation_openai_key else "local"
    prompt = (req.text or "")[:500] or (req.imageUrl or "[image]")[:500]
    return await submit(st, who, MODERATION, model=model, prompt=prompt,
                        request=task_request(req, img, digest), idempotency_key=a.idempotency_key, wait=wait,
                        prepare=store_blob if img is not None else None, request_hash=a.request_hash,
                        webhook=a.hook)


def _answer(st: AppState, sub: Submitted, wait: bool) -> Response:
    if not wait:
        return accepted(st, sub.job_id)
    if sub.result is None:
        raise GatewayTimeout("Moderation did not finish in time; it is still running: poll the get URL",
                             extra={"job_id": sub.job_id, "get": status_url(st, sub.job_id)})
    # The reference API: a provider's rate limit is a 502 like any provider that gave up.
    return JSON(sub.result.raise_for_failure(sub.job_id, keep_rate_limit=False).output)
