"""A streamed request replayed (same Idempotency-Key) after its task's stream expired
(``v1_stream_ttl_seconds``): the events are rebuilt from the completion the task kept, which
``workers/assemble.py`` put together from the very chunks that were relayed. Without this a
replay read an expired stream: an empty stream ending in ``[DONE]`` while the status hash lived,
then a wait ending in a 504 — never the content the first request got.

The rebuilt stream is one chunk holding every choice's whole delta, then the usage chunk when
the task kept usage, then ``[DONE]``: what the OpenAI SDKs assemble into the same message. Its
events carry no ``id:`` (there is no stream left to resume from)."""

from __future__ import annotations

from typing import Any

import orjson
from starlette.responses import Response

from jobs.results import TaskResult

_HEAD = ("id", "created", "model", "system_fingerprint", "provider", "service_tier")
_TEXT = ("role", "content", "refusal", "reasoning")


def chunks(completion: Any) -> list[dict[str, Any]]:
    """The chunks a ``chat.completion`` object stands for."""
    done: dict[str, Any] = completion if isinstance(completion, dict) else {}
    head = {k: done[k] for k in _HEAD if k in done}
    choices = []
    raw = done.get("choices")
    for c in raw if isinstance(raw, list) else []:
        msg = c.get("message") if isinstance(c, dict) else None
        if not isinstance(msg, dict):
            continue
        delta = {k: msg[k] for k in _TEXT if msg.get(k) is not None}
        calls = msg.get("tool_calls")
        if isinstance(calls, list) and calls:
            delta["tool_calls"] = [{"index": i, **tc} for i, tc in enumerate(calls) if isinstance(tc, dict)]
        choices.append({"index": c.get("index", 0), "delta": delta, "finish_reason": c.get("finish_reason"),
                        "logprobs": c.get("logprobs")})
    out = [{**head, "object": "chat.completion.chunk", "choices": choices}]
    if done.get("usage"):
        out.append({**head, "object": "chat.completion.chunk", "choices": [], "usage": done["usage"]})
    return out


def events(result: TaskResult, job_id: str) -> bytes:
    """The whole event stream of a finished task; a failed one raises the error it answers with
    (as the first request got before any chunk, or as a whole answer)."""
    result.raise_for_failure(job_id)
    return b"".join(b"data: " + orjson.dumps(c) + b"\n\n" for c in chunks(result.output)) + b"data: [DONE]\n\n"


def answer(result: TaskResult, task_id: int, job_id: str) -> Response:
    return Response(events(result, job_id), media_type="text/event-stream",
                    headers={"Cache-Control": "no-cache", "X-SyncNode-Task-Id": str(task_id),
                             "X-SyncNode-Job-Id": job_id})
