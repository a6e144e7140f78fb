"""POST /chat-completion (OpenRouter) and POST /chatgpt-completion (OpenAI)."""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from ingress.api_models import Accepted, PredictionAnswer
from ingress.api_spec import IDEMPOTENCY, PAID, PREFER, api
from ingress.body import read_json
from ingress.hooks import checked_webhook, pop_webhook_fields
from ingress.responses import JSON
from ingress.schemas import ChatRequest
from ingress.state import AppState, state
from ingress.submit import Submitted, ensure_can_pay, status_url, submit
from jobs.errors import GatewayTimeout
from jobs.names import CHAT, CHATGPT, TaskKind
from jobs.results import TaskResult
from jobs.settings import to_dollars


def wants_async(request: Request) -> bool:
    """RFC 7240 ``Prefer: respond-async``: answer at once with a job to poll."""
    return "respond-async" in request.headers.get("prefer", "").lower()


def accepted(st: AppState, job_id: str) -> Response:
    return JSON({"success": True, "job_id": job_id, "get": status_url(st, job_id),
                 "status": "in_progress"}, status_code=202)


def prediction(uid: str, sub: Submitted, r: TaskResult, model: str) -> dict[str, Any]:
    return {"prediction": {
        "id": sub.task_id, "uid": uid, "output": r.output, "cost": to_dollars(r.cost_micros),
        "model": r.model or model, "status": r.status, "job_id": sub.job_id,
    }}


@api("Chat completion through OpenRouter ($0.02); waits for the answer unless Prefer: respond-async",
     tags=("chat",), auth="bearer", body=ChatRequest, webhooks=True, headers={**PREFER, **IDEMPOTENCY},
     ok={200: PredictionAnswer, 202: Accepted}, errors=PAID)
async def chat_completion(request: Request) -> Response:
    return await _chat(request, CHAT)


@api("Chat completion through OpenAI ($0.02); waits for the answer unless Prefer: respond-async",
     tags=("chat",), auth="bearer", body=ChatRequest, webhooks=True, headers={**PREFER, **IDEMPOTENCY},
     ok={200: PredictionAnswer, 202: Accepted}, errors=PAID)
async def chatgpt_completion(request: Request) -> Response:
    return await _chat(request, CHATGPT)


async def _chat(request: Request, kind: TaskKind) -> Response:
    st = state(request)
    early = await st.auth.early(request, public=True)
    body = await read_json(request, st.settings.max_body_bytes)
    hook_fields = pop_webhook_fields(body)
    req = ChatRequest.model_validate(body)
    who = await st.auth.confirm(request, early, req.uid, public=True)
    idempotency_key = request.headers.get("idempotency-key")
    # A webhook's address lookup is work: only for a caller who can pay (the charge stays the guard).
    calls = await ensure_can_pay(st, who, kind, idempotency_key) if hook_fields[0] is not None else 1
    hook = await checked_webhook(st, who.uid, calls, hook_fields)
    wait = not wants_async(request)
    sub = await submit(st, who, kind, model=req.model, prompt=req.prompt_text(),
                       request=req.provider_body(), idempotency_key=idempotency_key,
                       wait=wait, webhook=hook)
    if not wait:
        return accepted(st, sub.job_id)
    if sub.result is None:
        raise GatewayTimeout(
            "The task did not finish in time; it is still running: poll the get URL",
            extra={"job_id": sub.job_id, "get": status_url(st, sub.job_id)},
        )
    body = prediction(who.uid, sub, sub.result, req.model)
    # The reference API: a provider's rate limit is a 502 like any provider that gave up.
    sub.result.raise_for_failure(sub.job_id, extra=body, keep_rate_limit=False)
    return JSON(body)
