"""POST /v1/chat/completions: OpenAI's request and response, passed through.

The body goes to the provider as sent (tools, response_format, seed, stop, n, logprobs and any
field we do not know), with only ``model`` rewritten when the routing rule says so
(``ingress/v1/routing.py``). Priced like the reference's chat (``price_chat`` /
``price_chatgpt``), charged and refunded by the same rules. ``stream: true`` answers with
Server-Sent Events relayed from the worker (``ingress/v1/relay.py``).
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field
from starlette.requests import Request
from starlette.responses import Response

from ingress.admission import admit_v1
from ingress.api_models import ChatCompletion, V1Accepted
from ingress.api_spec import IDEMPOTENCY, PAID, PREFER, api
from ingress.chat import wants_async
from ingress.responses import JSON
from ingress.schemas import Message
from ingress.state import state
from ingress.submit import submit
from ingress.v1 import relay, replay
from ingress.v1.answer import timed_out
from jobs import keys
from jobs.names import CHAT, CHATGPT


class ChatCompletionRequest(BaseModel):
    """Only what we must check; the body itself is forwarded untouched (``extra="allow"``)."""

    model_config = ConfigDict(extra="allow", strict=True)

    model: str = Field(min_length=1, max_length=200)
    messages: list[Message] = Field(min_length=1)
    stream: bool = False
    stream_options: dict[str, Any] | None = None
    n: int | None = Field(None, ge=1, le=16)


def prompt_text(req: ChatCompletionRequest) -> str:
    for m in reversed(req.messages):
        if m.role == "user" and isinstance(m.content, str):
            return m.content[:500]
    return ""


@api("OpenAI's chat completions, passed through (stream: true answers with Server-Sent Events)", tags=("v1",),
     auth="bearer", body=ChatCompletionRequest, webhooks=True, headers={**PREFER, **IDEMPOTENCY},
     ok={200: (ChatCompletion, relay.EVENTS), 202: V1Accepted}, errors=PAID)
async def chat_completions(request: Request) -> Response:
    st = state(request)
    a = await admit_v1(request, ChatCompletionRequest, CHAT, CHATGPT)
    who, req, r, body = a.who, a.req, a.route, a.raw
    if not req.stream:
        body.pop("stream", None)
        body.pop("stream_options", None)
    is_async = wants_async(request)
    sub = await submit(st, who, r.kind, model=r.model, prompt=prompt_text(req), request=body,
                       idempotency_key=a.idempotency_key, webhook=a.hook,
                       wait=not (req.stream or is_async))
    if is_async:
        return relay.accepted(st, sub.task_id, sub.job_id, req.stream)
    if req.stream:
        if sub.result is not None and not await st.redis.exists(keys.chat_stream(sub.job_id)):
            # A replay, its stream expired: usage relayed as the worker relays it (workers/stream.py).
            usage = bool((req.stream_options or {}).get("include_usage"))
            return replay.answer(sub.result, sub.task_id, sub.job_id, usage=usage)
        return await relay.open_stream(st, sub.task_id, sub.job_id, uid=who.uid, cancel_on_disconnect=True)
    if sub.result is None:
        raise timed_out(sub.job_id, sub.task_id)
    return JSON(sub.result.raise_for_failure(sub.job_id).output)
