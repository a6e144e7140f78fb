"""The fake chat provider's streaming side, models and embeddings (on OpenAI's wire format).

A streamed completion is ``FAKE_STREAM_CHUNKS`` (50) content chunks, ``FAKE_STREAM_DELAY_MS``
(0) apart; a model name overrides either with ``chunks-<n>`` / ``delay-<ms>`` in it. Then a usage
chunk if ``stream_options.include_usage``, then ``[DONE]``. ``midfail-<k>`` sends k chunks, then
OpenRouter's mid-stream error event and no [DONE]; ``garbage-<k>`` puts a line that is not JSON
after k chunks. ``error-<status>`` (chat, streamed or not, and embeddings) answers that status
with ``{"error": <the request's fake_error field>}``: whatever error object a test needs.

Every stream is recorded in ``STREAMS`` (``GET /_streams``): when it started, how many chunks it
sent, and when it finished or when the client went away (``disconnected_at``).
"""

from __future__ import annotations

import asyncio
import base64
import os
import re
import struct
import time
from collections.abc import AsyncIterator
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

STREAMS: list[dict[str, Any]] = []
RECORD = os.environ.get("FAKE_PROVIDER_RECORD", "1") != "0"
CHUNKS = int(os.environ.get("FAKE_STREAM_CHUNKS", "50"))
DELAY_MS = float(os.environ.get("FAKE_STREAM_DELAY_MS", "0"))


def _param(model: str, name: str, default: float) -> float:
    m = re.search(rf"{name}-(\d+(?:\.\d+)?)", model)
    return float(m.group(1)) if m else default


def text_of(i: int) -> str:
    return f"w{i} "


def chunk(model: str, created: int, delta: dict[str, Any], finish: str | None = None) -> bytes:
    c = {"id": "chatcmpl-fake", "object": "chat.completion.chunk", "created": created, "model": model,
         "system_fingerprint": "fp_fake",
         "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]}
    return b"data: " + orjson.dumps(c) + b"\n\n"


async def _events(body: dict[str, Any], rec: dict[str, Any]) -> AsyncIterator[bytes]:
    model = str(body.get("model", ""))
    n = int(_param(model, "chunks", CHUNKS))
    delay = _param(model, "delay", DELAY_MS) / 1000
    fail_at = int(_param(model, "midfail", -1))
    garbage_at = int(_param(model, "garbage", -1))
    created = int(time.time())
    try:
        yield b": keep-alive\n\n"  # OpenRouter sends comments like this one; clients skip them
        for i in range(n):
            if i == fail_at:
                err = {"error": {"code": 502, "message": "Provider disconnected mid-stream"},
                       "choices": [{"index": 0, "delta": {"content": ""}, "finish_reason": "error"}]}
                yield b"data: " + orjson.dumps(err) + b"\n\n"
                rec["finished_at"] = time.time()
                return
            if i == garbage_at:
                yield b"data: {not json\n\n"
            if i and delay:
                await asyncio.sleep(delay)
            delta = {"role": "assistant", "content": text_of(i)} if i == 0 else {"content": text_of(i)}
            yield chunk(model, created, delta, "stop" if i == n - 1 else None)
            rec["chunks"] = i + 1
            rec.setdefault("first_chunk_at", time.time())
        if (body.get("stream_options") or {}).get("include_usage"):
            usage = {"id": "chatcmpl-fake", "object": "chat.completion.chunk", "created": created, "model": model,
                     "choices": [], "usage": {"prompt_tokens": 5, "completion_tokens": n, "total_tokens": n + 5}}
            yield b"data: " + orjson.dumps(usage) + b"\n\n"
        yield b"data: [DONE]\n\n"
        rec["finished_at"] = time.time()
    except BaseException:
        rec["disconnected_at"] = time.time()  # the client closed the connection mid-stream
        raise


def respond(request: Request, body: dict[str, Any], prompt: str) -> Response:
    rec: dict[str, Any] = {"prompt": prompt, "model": body.get("model"), "started_at": time.time(), "chunks": 0,
                           "stream_options": body.get("stream_options")}
    if RECORD:
        STREAMS.append(rec)
    return StreamingResponse(_events(body, rec), media_type="text/event-stream")


async def streams(request: Request) -> Response:
    return JSONResponse(STREAMS)


MODELS_CALLS: list[str] = []


async def openrouter_models(request: Request) -> Response:
    MODELS_CALLS.append("openrouter")
    return JSONResponse({"data": [
        {"id": "openai/gpt-4o", "name": "OpenAI: GPT-4o", "created": 1715367049, "context_length": 128000},
        {"id": "anthropic/claude-3.5-sonnet", "name": "Anthropic: Claude 3.5 Sonnet", "created": 1718841600,
         "context_length": 200000},
    ]})


async def openai_models(request: Request) -> Response:
    MODELS_CALLS.append("openai")
    if not request.headers.get("authorization", "").startswith("Bearer sk-"):
        return JSONResponse({"error": {"message": "Incorrect API key provided", "type": "invalid_request_error",
                                       "code": "invalid_api_key"}}, status_code=401)
    return JSONResponse({"object": "list", "data": [
        {"id": "gpt-4o-mini", "object": "model", "created": 1721172741, "owned_by": "system"},
        {"id": "text-embedding-3-small", "object": "model", "created": 1705948997, "owned_by": "system"},
    ]})


def asked_error(body: dict[str, Any]) -> Response | None:
    model = str(body.get("model", ""))
    if not model.startswith("error-"):
        return None
    return JSONResponse({"error": body.get("fake_error")}, status_code=int(model.removeprefix("error-")))


def vector(text: str, dims: int = 8) -> list[float]:
    return [round(((hash(text) >> (i * 4)) % 1000) / 1000, 3) for i in range(dims)]


async def embeddings(request: Request) -> Response:
    body = await request.json()
    if (asked := asked_error(body)) is not None:
        return asked
    inputs = body.get("input")
    items = [inputs] if isinstance(inputs, str) else list(inputs)
    b64 = body.get("encoding_format") == "base64"
    data = []
    for i, text in enumerate(items):
        vec = vector(str(text))
        emb: Any = base64.b64encode(struct.pack(f"<{len(vec)}f", *vec)).decode() if b64 else vec
        data.append({"object": "embedding", "index": i, "embedding": emb})
    return JSONResponse({"object": "list", "data": data, "model": body.get("model"),
                         "usage": {"prompt_tokens": len(items), "total_tokens": len(items)}})


ROUTES = [
    Route("/_streams", streams),
    Route("/models", openrouter_models), Route("/v1/models", openai_models),
    Route("/embeddings", embeddings, methods=["POST"]), Route("/v1/embeddings", embeddings, methods=["POST"]),
]
