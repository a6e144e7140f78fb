"""Admitting a paid request whose work starts before its charge (an image fetched or decoded):
the order every such route follows, in one place.

Cheapest refusal first: the credential from the headers, whether the account can pay (before a
15 MiB body is read), the body and its fields, the uid it names, the webhook (a DNS lookup, so
only for a caller who can pay), then the Idempotency-Key fingerprint of the request as sent, so
a replay is settled before any work.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from pydantic import BaseModel
from starlette.requests import Request

from ingress.auth import Principal
from ingress.body import read_json
from ingress.hooks import WebhookTarget, checked_webhook, pop_webhook_fields
from ingress.state import state
from ingress.submit import body_hash, ensure_can_pay
from ingress.v1.routing import Route, route_for
from jobs.names import TaskKind

M = TypeVar("M", bound=BaseModel)


@dataclass(frozen=True, slots=True)
class Admitted(Generic[M]):
    who: Principal
    req: M
    # How many calls at this price the balance covers: the cap on the caller's pre-charge work.
    calls: int
    hook: WebhookTarget | None
    idempotency_key: str | None
    request_hash: bytes


async def admit(request: Request, kind: TaskKind, model: type[M]) -> Admitted[M]:
    st = state(request)
    early = await st.auth.early(request, public=True)
    idempotency_key = request.headers.get("idempotency-key")
    calls = await ensure_can_pay(st, early, kind, idempotency_key) if early else 0
    body = await read_json(request, st.settings.max_media_body_bytes)
    hook_fields = pop_webhook_fields(body)
    req = model.model_validate(body)
    who = await st.auth.confirm(request, early, getattr(req, "uid", None), public=True)
    if early is None:  # uid-only mode: the body named the account
        calls = await ensure_can_pay(st, who, kind, idempotency_key)
    hook = await checked_webhook(st, who.uid, calls, hook_fields)
    return Admitted(who, req, calls, hook, idempotency_key, body_hash(kind, req.model_dump(mode="json"), hook))


@dataclass(frozen=True, slots=True)
class AdmittedV1(Generic[M]):
    who: Principal
    req: M
    # The body as sent, less our webhook fields: what the provider gets (model name routed).
    raw: dict[str, Any]
    route: Route
    hook: WebhookTarget | None
    idempotency_key: str | None


async def admit_v1(request: Request, model: type[M], openrouter: TaskKind, openai: TaskKind) -> AdmittedV1[M]:
    """The /v1 order: the credential from the headers (no body read without one), the body, the
    route (which key, which kind), and the webhook's address lookup only for a caller who can pay
    (the charge stays the guard)."""
    st = state(request)
    who = await st.auth.principal(request, None, public=False)
    raw = await read_json(request, st.settings.max_body_bytes)
    hook_fields = pop_webhook_fields(raw)  # ours (completion webhooks), not the provider's
    req = model.model_validate(raw)
    route = await route_for(st.db, who.uid, str(raw["model"]), openrouter, openai)  # validated by model
    idempotency_key = request.headers.get("idempotency-key")
    calls = await ensure_can_pay(st, who, route.kind, idempotency_key) if hook_fields[0] is not None else 1
    hook = await checked_webhook(st, who.uid, calls, hook_fields)
    return AdmittedV1(who, req, {**raw, "model": route.model}, route, hook, idempotency_key)
