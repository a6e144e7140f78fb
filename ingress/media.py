"""POST /generate (any Replicate model) and POST /face-swap/run: charge, enqueue, answer at once.

Both take bodies up to ``SYNCNODE_MAX_MEDIA_BODY_BYTES`` (face swap images arrive as base64);
larger ones get 413. The task's ``request`` is exactly what Replicate will be sent:
``{"model", "input"}``; the media worker creates the prediction (``workers/media.py``).
"""

from __future__ import annotations

import base64
import binascii
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator
from starlette.requests import Request
from starlette.responses import Response

from ingress.body import read_json
from ingress.chat import accepted
from ingress.image_input import DecodeLimits, ImageBytes, check_decodes, decode_limits
from ingress.state import state
from ingress.submit import ensure_can_pay, submit
from jobs.errors import BadRequest
from jobs.model_refs import valid_model
from jobs.names import FACE_SWAP, GENERATE
from storage.files.sniff import IMAGE_TYPES, sniff


class GenerateRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    uid: str | None = None
    model: str = Field(min_length=3, max_length=200)
    input: dict[str, Any]

    @field_validator("model")
    @classmethod
    def _model(cls, v: str) -> str:
        if not valid_model(v):
            raise ValueError("expected owner/name, owner/name:<64-hex version> or a 64-hex version id")
        return v


class FaceSwapInput(BaseModel):
    model_config = ConfigDict(extra="forbid")

    source_image: str = Field(min_length=1)
    target_image: str = Field(min_length=1)
    background_enhance: bool | None = None


class FaceSwapRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    uid: str | None = None
    input: FaceSwapInput


async def image_data_url(field: str, value: str, limits: DecodeLimits) -> str:
    """A base64 image (bare or as a data: URL) → a data: URL with its real type; 400 otherwise.

    The bytes must decode (in a thread): magic bytes alone let a truncated image, or text that
    happens to start with "BM", through to be charged for and fail at Replicate."""
    raw = value.split(",", 1)[1] if value.startswith("data:") else value
    try:
        data = base64.b64decode("".join(raw.split()), validate=True)
    except (binascii.Error, ValueError):
        raise BadRequest(f"Invalid input.{field}: not valid base64")
    ctype, _ = sniff(data[:64])
    if ctype not in IMAGE_TYPES:
        raise BadRequest(f"Invalid input.{field}: not an image (PNG, JPEG, WebP, GIF, BMP, AVIF or HEIC)")
    if ctype != "image/heic":  # no HEIC decoder here: its magic bytes are all we can check
        try:
            await check_decodes(ImageBytes(data, ctype), limits)
        except BadRequest as e:
            raise BadRequest(f"Invalid input.{field}: {e}")
    return f"data:{ctype};base64,{base64.b64encode(data).decode()}"


def _input_map(raw: str) -> dict[str, str]:
    pairs = (p.split("=", 1) for p in raw.split(",") if "=" in p)
    return {a.strip(): b.strip() for a, b in pairs}


async def generate(request: Request) -> Response:
    st = state(request)
    early = await st.auth.early(request, public=True)
    req = GenerateRequest.model_validate(await read_json(request, st.settings.max_media_body_bytes))
    who = await st.auth.confirm(request, early, req.uid, public=True)
    prompt = req.input.get("prompt")
    sub = await submit(st, who, GENERATE, model=req.model, prompt=str(prompt)[:500] if prompt else None,
                       request={"model": req.model, "input": req.input},
                       idempotency_key=request.headers.get("idempotency-key"), wait=False)
    return accepted(st, sub.job_id)


async def face_swap(request: Request) -> Response:
    st = state(request)
    early = await st.auth.early(request, public=True)
    req = FaceSwapRequest.model_validate(await read_json(request, st.settings.max_media_body_bytes))
    who = await st.auth.confirm(request, early, req.uid, public=True)
    idempotency_key = request.headers.get("idempotency-key")
    # Two image decodes follow: only for a caller who can pay. A bad image is still never charged.
    await ensure_can_pay(st, who, FACE_SWAP, idempotency_key)
    names = _input_map(st.settings.face_swap_input_map)
    limits = decode_limits(st.settings)
    ours: dict[str, Any] = {"source_image": await image_data_url("source_image", req.input.source_image, limits),
                            "target_image": await image_data_url("target_image", req.input.target_image, limits)}
    if req.input.background_enhance is not None:
        ours["background_enhance"] = req.input.background_enhance
    model = st.settings.face_swap_model
    sub = await submit(st, who, FACE_SWAP, model=model, prompt="face swap",
                       request={"model": model, "input": {names.get(k, k): v for k, v in ours.items()}},
                       idempotency_key=idempotency_key, wait=False)
    return accepted(st, sub.job_id)
