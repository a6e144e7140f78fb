"""POST /webhooks/replicate?job_id=…: Replicate's ``completed`` event for a prediction.

Verified with the Standard Webhooks signature under the secret of the Replicate account that
created the prediction (stored encrypted on the task); anything else is 401 and ignored. A
verified event enqueues a one-off poll (``<job_id>:hook:<webhook-id>``, so a redelivered event
is a no-op) that finishes the task through the same code as polling. It is enqueued urgent
(``jobs/queue.py``): ahead of routine polls that are due, so a poll worker that has fallen
behind its chains still finishes a prediction within moments of its webhook.
"""

from __future__ import annotations

from typing import Any

import orjson
from standardwebhooks import Webhook, WebhookVerificationError
from starlette.requests import Request
from starlette.responses import Response

from ingress.api_models import Received
from ingress.api_requests import ReplicateHookQuery
from ingress.api_spec import api
from ingress.body import read_bytes
from ingress.params import text_param
from ingress.responses import JSON
from ingress.state import state
from jobs.errors import BadRequest, Unauthorized
from jobs.names import MEDIA_POLL
from jobs.queue import Job
from storage.predictions import PredictionRepository

_MAX = 1 << 20
_SIGNED = {"webhook-id": "Standard Webhooks message id", "webhook-timestamp": "Unix seconds",
           "webhook-signature": "v1,<base64 HMAC> under the prediction's webhook secret"}
_TERMINAL = {"succeeded", "failed", "canceled", "aborted"}


@api("Replicate prediction webhooks (Standard Webhooks signature)", tags=("webhooks",), auth="signature",
     query=ReplicateHookQuery, raw_body="application/json", ok={200: Received}, errors=(400, 401, 413),
     headers=_SIGNED, required_headers=tuple(_SIGNED))
async def replicate(request: Request) -> Response:
    st = state(request)
    job_id = text_param(request, "job_id")
    if not job_id:
        raise BadRequest("Missing job_id parameter")
    if not all(h in request.headers for h in ("webhook-id", "webhook-timestamp", "webhook-signature")):
        raise Unauthorized("Missing webhook signature headers")
    # Known before the body is read: an unknown or unsigned job costs one indexed lookup.
    found = await PredictionRepository(st.db).webhook_secret(job_id)
    if found is None or found[1] is None:
        raise Unauthorized("Unknown prediction or no webhook was requested for it")
    body = await read_bytes(request, _MAX, "Webhook body")
    secret = st.box.decrypt(found[1])
    try:
        Webhook(secret).verify(body, dict(request.headers))
    except WebhookVerificationError:
        raise Unauthorized("Invalid webhook signature")
    try:
        pred: Any = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise BadRequest("Webhook body is not JSON")
    status = pred.get("status") if isinstance(pred, dict) else None
    if status in _TERMINAL:
        hook_id = request.headers.get("webhook-id", "")
        # Urgent: the user is waiting on this one, and routine polls may be queued ahead of it.
        await st.queue.enqueue(Job("poll", MEDIA_POLL, f"{job_id}:hook:{hook_id}", (job_id, 0, False), urgent=True))
    return JSON({"ok": True})
