"""A streamed request replayed (same Idempotency-Key) after its task's stream expired
(``v1_stream_ttl_seconds``): the events are rebuilt from the completion the task kept, which
``workers/assemble.py`` put together from the very chunks that were relayed. Without this a
replay read an expired stream: an empty stream ending in ``[DONE]`` while the status hash lived,
then a wait ending in a 504 — never the content the first request got.

The rebuilt stream is one chunk holding every choice's whole delta, then the usage chunk when
the task kept usage and the request asked for it (``stream_options.include_usage``: the worker
always asks the provider, but relays usage only then), then ``[DONE]``: what the OpenAI SDKs
assemble into the same message. A stream that broke off after its first chunk (failed, and
charged: the client had text) ends with the error event the first request got instead of
``[DONE]``. Its events carry no ``id:`` (there is no stream left to resume from)."""

from __future__ import annotations

from typing import Any

import orjson
from starlette.responses import Response

from ingress.v1.relay import error_event
from jobs.results import TaskResult

_HEAD = ("id", "created", "model", "system_fingerprint", "provider", "service_tier")
_TEXT = ("role", "content", "refusal", "reasoning")


def chunks(completion: Any, *, usage: bool = True) -> list[dict[str, Any]]:
    """The chunks a ``chat.completion`` object stands for (its usage only when ``usage``)."""
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
    if usage and done.get("usage"):
        out.append({**head, "object": "chat.completion.chunk", "choices": [], "usage": done["usage"]})
    return out


def events(result: TaskResult, job_id: str, *, usage: bool) -> bytes:
    """The whole event stream of a finished task; a failed one raises the error it answers with
    (as the first request got before any chunk, or as a whole answer), unless it broke off
    after its first chunk (``workers/runner.py`` fail_charged: the only failure that is charged)."""
    broke_off = result.status == "failed" and result.cost_micros > 0
    if not broke_off:
        result.raise_for_failure(job_id)
    body = b"".join(b"data: " + orjson.dumps(c) + b"\n\n" for c in chunks(result.output, usage=usage))
    if broke_off:  # as relay.end_frame ended it the first time
        return body + error_event(result.error or "The task failed", "server_error", "stream_failed")
    return body + b"data: [DONE]\n\n"


def answer(result: TaskResult, task_id: int, job_id: str, *, usage: bool) -> Response:
    return Response(events(result, job_id, usage=usage), media_type="text/event-stream",
                    headers={"Cache-Control": "no-cache", "X-SyncNode-Task-Id": str(task_id),
                             "X-SyncNode-Job-Id": job_id})
