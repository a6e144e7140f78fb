"""What each route accepts and answers, declared once next to its handler.

``@api(...)`` binds a handler to its request model (body and/or query), its answers per status,
who may call it and its tags. ``ingress/app.py`` ROUTES stays the route table (path + method →
handler); ``ingress/openapi.py`` walks it and builds ``/openapi.json`` from these declarations,
so a route without one is a test failure (``tests/test_openapi.py``), and the schemas in the
document are the very pydantic models that validate the requests.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar

from pydantic import BaseModel

# none: public. bearer: an API key or access token. public_bearer: a credential, or only a uid in
# the body/query when the operator set SYNCNODE_ALLOW_UID_ONLY (the reference's public routes).
# admin: SYNCNODE_ADMIN_TOKEN. signup: admin token, or nothing with SYNCNODE_OPEN_SIGNUP.
# signature: the caller signs the body (Stripe, Replicate), no bearer.
Auth = Literal["none", "bearer", "admin", "signup", "signature"]


@dataclass(frozen=True, slots=True)
class Raw:
    """An answer that is not one of our JSON models (metrics text, files, event streams)."""

    media_type: str
    schema: Mapping[str, Any] = field(default_factory=dict)
    description: str = "OK"


Answer = type[BaseModel] | Raw | None
# One answer, or several media types for the same status (JSON, or an event stream when asked).
Answers = Answer | tuple[Answer, ...]


@dataclass(frozen=True, slots=True)
class Operation:
    summary: str
    tags: tuple[str, ...]
    auth: Auth
    # Success answers by status; errors are added from ``errors`` (and the route's family).
    ok: Mapping[int, Answers]
    body: type[BaseModel] | None = None
    body_required: bool = True
    # Completion webhooks: ``webhook`` and ``webhook_events_filter`` (ingress/hooks.py) in the body.
    webhooks: bool = False
    query: type[BaseModel] | None = None
    path: type[BaseModel] | None = None
    # Request headers the route reads (name → description).
    headers: Mapping[str, str] = field(default_factory=dict)
    required_headers: tuple[str, ...] = ()
    errors: tuple[int, ...] = (400, 401, 403, 404)
    # Extra body media types accepted as is (e.g. a signed webhook body).
    raw_body: str | None = None


SPECS: dict[Callable[..., Any], Operation] = {}

H = TypeVar("H", bound=Callable[..., Any])

IDEMPOTENCY = {"Idempotency-Key": "Replays the first answer for the same key and body; 409 for another body"}
PREFER = {"Prefer": "'respond-async': answer 202 with a job_id at once instead of waiting"}


def api(summary: str, *, tags: tuple[str, ...], auth: Auth, ok: Mapping[int, Answers],
        body: type[BaseModel] | None = None, body_required: bool = True, webhooks: bool = False,
        query: type[BaseModel] | None = None, path: type[BaseModel] | None = None,
        headers: Mapping[str, str] | None = None, errors: tuple[int, ...] = (400, 401, 403, 404),
        raw_body: str | None = None, required_headers: tuple[str, ...] = ()) -> Callable[[H], H]:
    """Declare a handler's contract; the handler itself is returned unchanged."""
    op = Operation(summary=summary, tags=tags, auth=auth, ok=ok, body=body, body_required=body_required,
                   webhooks=webhooks, query=query, path=path, headers=headers or {}, errors=errors,
                   raw_body=raw_body, required_headers=required_headers)

    def register(handler: H) -> H:
        SPECS[handler] = op
        return handler

    return register


# Error statuses by kind of route (each answered as ErrorBody, or OpenAIError under /v1).
READ = (400, 401, 403, 404)
PAID = (400, 401, 402, 403, 404, 409, 413, 429, 502, 503, 504)
