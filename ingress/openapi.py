"""GET /openapi.json: the API as OpenAPI 3.1, request bodies from the pydantic schemas."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel
from starlette.requests import Request
from starlette.responses import Response

from ingress.media import FaceSwapRequest, GenerateRequest
from ingress.moderation import ModerationRequest
from ingress.responses import JSON
from ingress.schemas import AccountCreate, AdminCredit, ChatRequest

_ERR = {"description": "Error", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}

# (method, path, summary, request model, public per the reference)
ENDPOINTS: list[tuple[str, str, str, type[BaseModel] | None, bool]] = [
    ("post", "/chat-completion", "Chat completion through OpenRouter ($0.02)", ChatRequest, True),
    ("post", "/chatgpt-completion", "Chat completion through OpenAI ($0.02)", ChatRequest, True),
    ("post", "/moderate", "Moderate text and/or an image; local models unless the operator set an OpenAI "
     "key ($0.01)", ModerationRequest, True),
    ("post", "/", "Moderation at the root, as the reference's moderation host ($0.01)", ModerationRequest,
     True),
    ("post", "/generate", "Run any Replicate model (owner/name, owner/name:version or a version id); "
     "async, outputs re-hosted ($0.02)", GenerateRequest, True),
    ("post", "/face-swap/run", "Face swap from two base64 images; async ($0.02)", FaceSwapRequest, True),
    ("get", "/face-swap/status", "Status of a face swap (query: job_id)", None, True),
    ("get", "/prediction-status", "Status and output of a task (query: job_id)", None, True),
    ("get", "/balance", "Current balance in dollars", None, True),
    ("get", "/api-keys", "Stored provider keys, masked", None, False),
    ("post", "/api-keys", "Store provider keys (openrouter_key, chatgpt_key, replicate_key, huggingface_key)",
     None, False),
    ("get", "/tasks", "Task history (query: page, size, kind, status)", None, False),
    ("get", "/tasks/{id}", "One task", None, False),
    ("delete", "/tasks/{id}", "Delete a finished task from the history", None, False),
    ("get", "/billing-history", "Ledger entries with the balance after each, newest first "
     "(query: before=<id>, limit)", None, False),
    ("get", "/billing-threshold", "Auto-recharge settings and state", None, False),
    ("post", "/billing-threshold", "Set auto-recharge ({\"threshold\", \"recharge_below\": dollars, "
     "\"enabled\": bool})", None, False),
    ("get", "/card", "Saved payment card (needs Stripe)", None, False),
    ("post", "/topup_card", "Top up from the saved card ({\"amount\": dollars}; Idempotency-Key)", None, False),
    ("post", "/accounts", "Create an account (admin token, or open sign-up)", AccountCreate, False),
    ("post", "/admin/credit", "Add or remove credit (admin token)", AdminCredit, False),
    ("post", "/tasks/{id}/cancel", "Cancel a queued or running task; refunded", None, False),
    ("get", "/storage", "Where generated files are hosted (secrets masked)", None, False),
    ("post", "/storage", "Host generated files on S3, Bunny or the default storage (checked with a "
     "test write)", None, False),
    ("post", "/card/setup", "Start saving a card: a SetupIntent's client_secret for Stripe.js", None, False),
    ("post", "/card", "Save a confirmed card ({\"payment_method\": \"pm_…\"}) as the default", None, False),
    ("delete", "/card", "Remove the saved card", None, False),
    ("post", "/webhooks/stripe", "Stripe events (Stripe-Signature, STRIPE_WEBHOOK_SECRET)", None, True),
    ("post", "/webhooks/replicate", "Replicate prediction webhooks (Standard Webhooks signature)", None, True),
    ("get", "/healthz", "Liveness", None, True),
    ("get", "/readyz", "Readiness: Postgres and Redis reachable", None, True),
    ("get", "/metrics", "Prometheus metrics", None, True),
    ("get", "/webhook-secret", "The account's Standard Webhooks signing secret (whsec_…; created on first use)",
     None, False),
    ("post", "/webhook-secret/rotate", "New signing secret; the previous one also signs for 24 h", None, False),
    ("get", "/tasks/{id}/deliveries", "Completion webhook deliveries of a task, every attempt", None, False),
    # The web UI's endpoints (issue 9); a session cookie + X-CSRF-Token also authenticates.
    ("get", "/keys", "Your SyncNode API keys, by prefix", None, False),
    ("post", "/keys", "Create a SyncNode API key (shown once)", None, False),
    ("delete", "/keys/{prefix}", "Revoke the API key with this prefix", None, False),
    ("get", "/usage", "Balance, net spend per day (query: days, default 30) and task counts by status", None,
     False),
]


def build() -> dict[str, Any]:
    paths: dict[str, dict[str, Any]] = {}
    schemas: dict[str, Any] = {"Error": {"type": "object", "properties": {"error": {"type": "string"}},
                                         "required": ["error"]}}
    for method, path, summary, model, public in ENDPOINTS:
        op: dict[str, Any] = {"summary": summary, "responses": {"200": {"description": "OK"}, "default": _ERR}}
        if not public:
            op["security"] = [{"bearer": []}]
        if model is not None:
            schemas[model.__name__] = model.model_json_schema(ref_template="#/components/schemas/{model}")
            schemas.update(schemas[model.__name__].pop("$defs", {}))
            op["requestBody"] = {"required": True, "content": {"application/json": {
                "schema": {"$ref": f"#/components/schemas/{model.__name__}"}}}}
        paths.setdefault(path, {})[method] = op
    return {
        "openapi": "3.1.0",
        "info": {"title": "SyncNode", "version": "0.1.0",
                 "description": "AI API gateway. Authenticate with 'Authorization: Bearer <API key>'. "
                                "Send 'Prefer: respond-async' to get a job_id at once instead of waiting."},
        "paths": paths,
        "components": {"schemas": schemas,
                       "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}}},
        "security": [{"bearer": []}],
    }


_SPEC = build()


async def openapi(request: Request) -> Response:
    return JSON(_SPEC)
