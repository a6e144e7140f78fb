"""POST /generate (any Replicate model) and POST /face-swap/run: charge, enqueue, answer at once.

Both take bodies up to ``SYNCNODE_MAX_MEDIA_BODY_BYTES`` (face swap images arrive as base64);
larger ones get 413. The task's ``request`` is exactly what Replicate will be sent:
``{"model", "input"}``; the media worker creates the prediction (``workers/media.py``).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, JsonValue, field_validator
from starlette.requests import Request
from starlette.responses import Response

from ingress.admission import admit
from ingress.api_models import Accepted
from ingress.api_spec import IDEMPOTENCY, PAID, api
from ingress.body import read_json
from ingress.chat import accepted
from ingress.hooks import checked_webhook, pop_webhook_fields
from ingress.image_input import BASE64_PATTERN, DecodeLimits, ImageBytes, check_decodes, decode_limits, probe
from ingress.state import state
from ingress.submit import ensure_can_pay, paid_work, replay, submit
from jobs.errors import BadRequest
from jobs.model_refs import MODEL_PATTERN, valid_model
from jobs.names import FACE_SWAP, GENERATE
from storage.files.sniff import IMAGE_TYPES, sniff


class GenerateRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    uid: str | None = None
    model: str = Field(min_length=3, max_length=200, json_schema_extra={"pattern": MODEL_PATTERN})
    input: dict[str, Any]

    @field_validator("model")
    @classmethod
    def _model(cls, v: str) -> str:
        if not valid_model(v):
            raise ValueError("expected owner/name, owner/name:<64-hex version> or a 64-hex version id")
        return v


# What parse_image takes (its bytes must then be an image: that, no schema can say).
_IMAGE: dict[str, JsonValue] = {"pattern": BASE64_PATTERN, "contentEncoding": "base64", "contentMediaType": "image/*"}


class FaceSwapInput(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    source_image: str = Field(min_length=1, json_schema_extra=_IMAGE)
    target_image: str = Field(min_length=1, json_schema_extra=_IMAGE)
    background_enhance: bool | None = None


class FaceSwapRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    uid: str | None = None
    input: FaceSwapInput


def parse_image(field: str, value: str, max_pixels: int) -> ImageBytes:
    """A base64 image (bare or as a data: URL) with its real type, checked from its header; 400
    otherwise. Both images of a call are parsed before either is decoded: a bomb is refused
    without spending a decode on its partner."""
    raw = value.split(",", 1)[1] if value.startswith("data:") else value
    try:
        data = base64.b64decode("".join(raw.split()), validate=True)
    except (binascii.Error, ValueError):
        raise BadRequest(f"Invalid input.{field}: not valid base64")
    ctype, _ = sniff(data[:64])
    if ctype not in IMAGE_TYPES:
        raise BadRequest(f"Invalid input.{field}: not an image (PNG, JPEG, WebP, GIF, BMP, AVIF or HEIC)")
    img = ImageBytes(data, ctype)
    try:
        probe(img, max_pixels)
    except BadRequest as e:
        raise BadRequest(f"Invalid input.{field}: {e}")
    return img


async def decoded_data_url(field: str, img: ImageBytes, limits: DecodeLimits) -> str:
    """The image as a data: URL, once its bytes really decode (magic bytes alone let a truncated
    image, or text that happens to start with "BM", through to be charged for and fail at
    Replicate). No HEIC decoder here: its magic bytes are all we can check."""
    if img.mime != "image/heic":
        try:
            await check_decodes(img, limits)
        except BadRequest as e:
            raise BadRequest(f"Invalid input.{field}: {e}")
    return f"data:{img.mime};base64,{base64.b64encode(img.data).decode()}"


def _larger_than(request: Request, limit: int) -> bool:
    """Whether the body may exceed ``limit`` bytes (a chunked body, without a length, may)."""
    length = request.headers.get("content-length")
    return length is None or not length.isdigit() or int(length) > limit


def _input_map(raw: str) -> dict[str, str]:
    pairs = (p.split("=", 1) for p in raw.split(",") if "=" in p)
    return {a.strip(): b.strip() for a, b in pairs}


@api("Run any Replicate model (owner/name, owner/name:version or a version id); async, outputs re-hosted "
     "($0.02)", tags=("media",), auth="bearer", body=GenerateRequest, webhooks=True, headers=IDEMPOTENCY,
     ok={202: Accepted}, errors=PAID)
async def generate(request: Request) -> Response:
    st = state(request)
    early = await st.auth.early(request, public=True)
    idempotency_key = request.headers.get("idempotency-key")
    calls: int | None = None
    if early is not None and _larger_than(request, st.settings.max_body_bytes):
        # A 15 MiB body is read only for an account that can pay for the call. A body no larger
        # than a chat call's costs less to read than the look-up that would refuse it first, and
        # the charge refuses a caller who cannot pay all the same.
        calls = await ensure_can_pay(st, early, GENERATE, idempotency_key)
    body = await read_json(request, st.settings.max_media_body_bytes)
    hook_fields = pop_webhook_fields(body)
    req = GenerateRequest.model_validate(body)
    who = await st.auth.confirm(request, early, req.uid, public=True)
    if calls is None and hook_fields[0] is not None:
        # A webhook's lookups are work done before the charge: only for a caller who can pay.
        calls = await ensure_can_pay(st, who, GENERATE, idempotency_key)
    hook = await checked_webhook(st, who.uid, calls or 0, hook_fields)
    prompt = req.input.get("prompt")
    sub = await submit(st, who, GENERATE, model=req.model, prompt=str(prompt)[:500] if prompt else None,
                       request={"model": req.model, "input": req.input},
                       idempotency_key=request.headers.get("idempotency-key"), wait=False, webhook=hook)
    return accepted(st, sub.job_id)


@api("Face swap from two base64 images; async ($0.02)", tags=("media",), auth="bearer", body=FaceSwapRequest,
     webhooks=True, headers=IDEMPOTENCY, ok={202: Accepted}, errors=PAID)
async def face_swap(request: Request) -> Response:
    st = state(request)
    a = await admit(request, FACE_SWAP, FaceSwapRequest)
    who, req = a.who, a.req
    sub = await replay(st, who, a.idempotency_key, a.request_hash, wait=False)
    if sub is not None:
        return accepted(st, sub.job_id)
    names = _input_map(st.settings.face_swap_input_map)
    limits = decode_limits(st.settings)
    # Two decodes: only for a caller who can pay, within their balance's share of checks at once.
    # A bad image is still never charged.
    async with paid_work(st, who, a.calls):
        images = {f: parse_image(f, getattr(req.input, f), limits.max_pixels)
                  for f in ("source_image", "target_image")}
        urls = await asyncio.gather(*(decoded_data_url(f, img, limits) for f, img in images.items()))
    ours: dict[str, Any] = dict(zip(images, urls, strict=True))
    if req.input.background_enhance is not None:
        ours["background_enhance"] = req.input.background_enhance
    model = st.settings.face_swap_model
    sub = await submit(st, who, FACE_SWAP, model=model, prompt="face swap",
                       request={"model": model, "input": {names.get(k, k): v for k, v in ours.items()}},
                       idempotency_key=a.idempotency_key, wait=False, request_hash=a.request_hash,
                       webhook=a.hook)
    return accepted(st, sub.job_id)
