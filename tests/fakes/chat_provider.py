"""A fake of OpenRouter's and OpenAI's chat completions API, on their real wire format.

Behaviour is picked by the model name, so a test needs no side channel:
  ``fail-500``      every call: 500 with an OpenAI-style error body
  ``flaky-429``     first call per prompt: 429 + Retry-After: 0, then 200
  ``reject-400``    400 invalid_request_error (a provider 4xx)
  ``or-error-200``  OpenRouter's HTTP 200 carrying ``{"error": {"code": 502}}``
  ``slow-<secs>``   answers after that many seconds
  ``nul-output``    a completion whose text holds U+0000 (Postgres cannot store it as is)
  ``hostile-output`` a completion with a lone surrogate in its text and 2**70 in its usage
  ``deep-output``   a completion nested 300 levels deep (past what our JSON encoder writes)
  ``limited-<secs>``first call per prompt: 429 + Retry-After: <secs>, then 200
  ``tool-call``     with ``tools``: answers with a call of the first tool
  ``error-<status>`` that status, the error object the request's ``fake_error`` holds
  anything else     200 at once
With ``"stream": true`` the answer is OpenAI's SSE stream (``tests/fakes/chat_stream.py``).
Every call is recorded (``GET /_calls``), with the Authorization header it carried; ``/models``
and ``/embeddings`` answer as OpenRouter's and OpenAI's do.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections import Counter
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from tests.fakes import chat_stream

CALLS: list[dict[str, Any]] = []
# Benchmarks turn recording off: a long run would otherwise grow this list without bound.
RECORD = os.environ.get("FAKE_PROVIDER_RECORD", "1") != "0"
_seen: Counter[str] = Counter()


def _error(status: int, message: str, type_: str, code: Any = None, headers: dict[str, str] | None = None
           ) -> Response:
    return JSONResponse({"error": {"message": message, "type": type_, "param": None, "code": code}},
                        status_code=status, headers=headers)


def completion(model: str, content: str) -> dict[str, Any]:
    return {
        "id": "gen-1732550000-abc", "object": "chat.completion", "created": int(time.time()), "model": model,
        "provider": "OpenAI",
        "choices": [{"index": 0, "logprobs": None, "finish_reason": "stop", "native_finish_reason": "stop",
                     "message": {"role": "assistant", "content": content, "refusal": None}}],
        "usage": {"prompt_tokens": 25, "completion_tokens": 85, "total_tokens": 110, "cost": 0.00042},
    }


async def chat_completions(request: Request) -> Response:
    body = await request.json()
    model = str(body.get("model", ""))
    prompt = str(body.get("messages", [{}])[-1].get("content", ""))
    if RECORD:
        CALLS.append({"model": model, "auth": request.headers.get("authorization"), "body": body,
                      "at": time.time()})
    if not request.headers.get("authorization", "").startswith("Bearer "):
        return _error(401, "No auth credentials found", "invalid_request_error", 401)
    if (asked := chat_stream.asked_error(body)) is not None:
        return asked
    if (extra := _v1_behaviour(request, body, model, prompt)) is not None:
        return extra
    if model == "fail-500":
        return _error(500, "The server had an error while processing your request.", "server_error")
    if model == "flaky-429":
        _seen[prompt] += 1
        if _seen[prompt] == 1:
            return _error(429, "Rate limit reached for requests", "requests", "rate_limit_exceeded",
                          headers={"Retry-After": "0"})
    if model == "reject-400":
        return _error(400, "invalid model ID", "invalid_request_error", "model_not_found")
    if model == "or-error-200":
        return JSONResponse({"error": {"code": 502, "message": "Provider returned error",
                                       "metadata": {"provider_name": "Fake"}}})
    if model == "nul-output":
        return JSONResponse(completion(model, "before\u0000after"))
    if model in ("hostile-output", "deep-output"):
        return _hostile(model)
    if model.startswith("slow-"):
        await asyncio.sleep(float(model.removeprefix("slow-")))
    return JSONResponse(completion(model, f"echo: {prompt}"))


def _hostile(model: str) -> Response:
    body = completion(model, "bad \ud800 text")
    if model == "hostile-output":
        body["usage"]["seed"] = 2**70
    else:
        deep: Any = "bottom"
        for _ in range(300):
            deep = [deep]
        body["choices"][0]["message"]["content"] = deep
    # The stdlib encoder, ASCII-only: what a provider's JSON would carry (\ud800 as an escape).
    return Response(json.dumps(body), media_type="application/json")


def _v1_behaviour(request: Request, body: dict[str, Any], model: str, prompt: str) -> Response | None:
    if model.startswith("limited-"):
        _seen[prompt] += 1
        if _seen[prompt] == 1:
            return _error(429, "Rate limit reached for requests", "requests", "rate_limit_exceeded",
                          headers={"Retry-After": model.removeprefix("limited-")})
    if body.get("stream") is True and model not in ("fail-500", "reject-400", "or-error-200"):
        return chat_stream.respond(request, body, prompt)
    if model == "tool-call" and body.get("tools"):
        return JSONResponse(tool_completion(model, body["tools"][0]["function"]["name"]))
    return None


def tool_completion(model: str, name: str) -> dict[str, Any]:
    out = completion(model, "")
    out["choices"][0].update(finish_reason="tool_calls", message={
        "role": "assistant", "content": None,
        "tool_calls": [{"id": "call_1", "type": "function",
                        "function": {"name": name, "arguments": '{"city": "Paris"}'}}]})
    return out


async def calls(request: Request) -> Response:
    return JSONResponse(CALLS)


async def reset(request: Request) -> Response:
    CALLS.clear()
    _seen.clear()
    chat_stream.STREAMS.clear()
    return JSONResponse({"ok": True})


app = Starlette(routes=[
    Route("/chat/completions", chat_completions, methods=["POST"]),
    Route("/api/v1/chat/completions", chat_completions, methods=["POST"]),
    Route("/v1/chat/completions", chat_completions, methods=["POST"]),
    Route("/_calls", calls), Route("/_reset", reset, methods=["POST"]),
    *chat_stream.ROUTES,
])


def calls_with_prompt(prompt: str) -> list[dict[str, Any]]:
    """The recorded calls whose last message is ``prompt`` (other tests, the fuzzer among them,
    send messages without text content: tool calls, odd shapes)."""
    def last(call: dict[str, Any]) -> Any:
        messages = call["body"].get("messages") if isinstance(call.get("body"), dict) else None
        return messages[-1].get("content") if isinstance(messages, list) and messages and \
            isinstance(messages[-1], dict) else None
    return [c for c in list(CALLS) if last(c) == prompt]
