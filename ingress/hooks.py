"""Completion webhooks, the ingress side: the ``webhook`` / ``webhook_events_filter`` fields every
task-creating call accepts, the signing secret (GET /webhook-secret, POST /webhook-secret/rotate)
and the delivery log (GET /tasks/{id}/deliveries). Delivery itself is ``workers/webhooks.py``.

A target is checked before the charge, so a refused one costs nothing and is never called: https
(http only for a ``SYNCNODE_WEBHOOK_ALLOW`` host), and every address its host resolves to public,
by the same rules as every other user-supplied URL (``storage.egress``). The worker checks again at
connect time and connects to the address it checked (DNS may answer differently later).

Webhooks have their own allow list: ``SYNCNODE_FETCH_ALLOW`` names internal hosts the operator
lets storage and moderation reach, and any user could otherwise POST to them and read the status
code from the delivery log. The lookup is work done before the charge, so (``checked_webhook``)
only for a caller who can pay, a few at once per account, with a timeout, on threads of its own:
a DNS server that never answers must not hold the loop's default pool, which sign-ins hash on.
"""

from __future__ import annotations

import asyncio
import socket
from concurrent.futures import ThreadPoolExecutor
from functools import cache
from typing import Any, Literal, get_args

import httpx
from pydantic import BaseModel, Field
from starlette.requests import Request
from starlette.responses import Response

from ingress.api_models import Deliveries, WebhookSecret
from ingress.api_requests import TaskPath, UidQuery
from ingress.api_spec import READ, api
from ingress.responses import JSON
from ingress.slots import slot
from ingress.state import AppState, state
from ingress.tasks import owned_task
from jobs import keys
from jobs.errors import BadRequest, RateLimited
from jobs.settings import Settings
from storage.egress import FetchRefused, Resolver, check_literal, vetted_addresses
from storage.webhooks import WebhookRepository, new_signing_secret, signing_secrets

WebhookEvent = Literal["start", "output", "completed"]
WEBHOOK_EVENTS: tuple[str, ...] = get_args(WebhookEvent)
# Replicate's default: every event. Ours are at most two per task (docs: README "Webhooks").
DEFAULT_EVENTS = WEBHOOK_EVENTS
MAX_URL_CHARS = 2048

WebhookTarget = tuple[str, tuple[str, ...]]


# A scheme _checked_url takes, and a host without user name or password.
URL_PATTERN = r"^[Hh][Tt][Tt][Pp][Ss]?://[^/?#@\s]+([/?#]|$)"


class WebhookFields(BaseModel):
    """The two fields as ``/openapi.json`` documents them on every task-creating call; the
    same rules :func:`webhook_target` enforces (plus what no schema can say: the host must
    resolve to public addresses)."""

    webhook: str | None = Field(None, min_length=1, max_length=MAX_URL_CHARS, pattern=URL_PATTERN,
                                description="Where to POST the task's status document, signed (Standard "
                                            "Webhooks): https, or http for a SYNCNODE_FETCH_ALLOW host")
    webhook_events_filter: list[WebhookEvent] | None = Field(
        None, min_length=1, description="Which events to send (default: all); needs webhook")


def pop_webhook_fields(body: dict[str, Any]) -> tuple[Any, Any]:
    """Take the webhook fields out of a request body (they are ours, not the provider's)."""
    return body.pop("webhook", None), body.pop("webhook_events_filter", None)


async def webhook_target(settings: Settings, webhook: Any, events: Any,
                         resolver: Resolver | None = None) -> WebhookTarget | None:
    """The validated (url, events) of a task-creating call, None without a webhook; 400 otherwise."""
    if webhook is None:
        if events is not None:
            raise BadRequest("webhook_events_filter needs a webhook URL")
        return None
    if not isinstance(webhook, str) or not webhook or len(webhook) > MAX_URL_CHARS:
        raise BadRequest(f"Invalid webhook: expected an https URL of at most {MAX_URL_CHARS} characters")
    wanted = _events(events)  # before the URL: no DNS lookup for a request that is refused anyway
    return await _checked_url(settings, webhook, resolver), wanted


def _events(events: Any) -> tuple[str, ...]:
    if events is None:
        return DEFAULT_EVENTS
    if not isinstance(events, list) or not events or not all(isinstance(e, str) for e in events):
        raise BadRequest(f"Invalid webhook_events_filter: a non-empty list of {', '.join(WEBHOOK_EVENTS)}")
    unknown = sorted(set(events) - set(WEBHOOK_EVENTS))
    if unknown:
        raise BadRequest(f"Invalid webhook_events_filter: unknown event {unknown[0]!r}; "
                         f"use {', '.join(WEBHOOK_EVENTS)}")
    return tuple(e for e in WEBHOOK_EVENTS if e in events)


async def _checked_url(settings: Settings, raw: str, resolver: Resolver | None) -> str:
    try:
        url = httpx.URL(raw)
    except (httpx.InvalidURL, ValueError) as e:
        raise BadRequest(f"Invalid webhook: not a valid URL: {e}")
    if not url.host or url.userinfo or url.scheme not in ("http", "https"):
        raise BadRequest("Invalid webhook: expected https://host/path (no user name or password)")
    port = url.port or (443 if url.scheme == "https" else 80)
    allow = settings.webhook_allow_list
    host = url.host.lower()
    if url.scheme == "http" and f"{host}:{port}" not in allow and f"[{host}]:{port}" not in allow:
        raise BadRequest("Invalid webhook: must be an https URL (http only for hosts in SYNCNODE_WEBHOOK_ALLOW)")
    try:
        check_literal(url.host, port, allow)
        await vetted_addresses(url.host, port, allow, resolver)
    except FetchRefused as e:
        raise BadRequest(f"Invalid webhook: {e}")
    return str(url)


async def checked_webhook(st: AppState, uid: str, calls: int, fields: tuple[Any, Any]) -> WebhookTarget | None:
    """``webhook_target`` for a caller ``ensure_can_pay`` let through (``calls``: how many calls
    its balance covers): at most that many of its lookups at once, capped by
    ``webhook_lookups_per_account``; a 429 beyond."""
    webhook, events = fields
    s = st.settings
    if webhook is None:
        return await webhook_target(s, webhook, events)
    limit = max(1, min(calls, s.webhook_lookups_per_account))
    async with slot(st.redis, keys.webhook_lookups(uid), s.webhook_lookup_timeout_seconds + 5) as held:
        if held > limit:
            raise RateLimited(f"At most {limit} webhook checks at once for this account; retry when one finishes",
                              headers={"Retry-After": "1"})
        return await webhook_target(s, webhook, events, lookup_resolver(s.webhook_lookup_threads,
                                                                         s.webhook_lookup_timeout_seconds))


@cache
def _lookup_pool(threads: int) -> ThreadPoolExecutor:
    return ThreadPoolExecutor(max(1, threads), thread_name_prefix="webhook-dns")


def lookup_resolver(threads: int, timeout: float) -> Resolver:
    """The OS resolver on a pool of its own, given up after ``timeout`` (the thread itself stays
    busy until the OS gives up: the pool's size bounds how many can hang at once)."""
    async def resolve(host: str, port: int) -> list[str]:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(timeout):
                infos = await loop.run_in_executor(_lookup_pool(threads), _getaddrinfo, host, port)
        except TimeoutError:
            raise FetchRefused(f"cannot resolve host {host!r}: no answer within {timeout:g} s")
        except socket.gaierror as e:
            raise FetchRefused(f"cannot resolve host {host!r}: {e.strerror}")
        except UnicodeError:  # a label IDNA cannot encode (empty, over 63 characters)
            raise FetchRefused(f"cannot resolve host {host!r}: not a valid host name")
        return list(dict.fromkeys(str(info[4][0]) for info in infos))
    return resolve


def _getaddrinfo(host: str, port: int) -> list[Any]:
    return socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)


@api("The account's Standard Webhooks signing secret (whsec_…; created on first use)", tags=("webhooks",),
     auth="bearer", query=UidQuery, ok={200: WebhookSecret}, errors=READ)
async def get_secret(request: Request) -> Response:
    st = state(request)
    who = await st.auth.principal(request, request.query_params.get("uid"), public=False)
    current, previous, until = await signing_secrets(st.db, st.box, who.uid)
    return JSON(_secret_body(current, previous, until))


@api("New signing secret; the previous one also signs for 24 h", tags=("webhooks",), auth="bearer",
     query=UidQuery, ok={200: WebhookSecret}, errors=READ)
async def rotate_secret(request: Request) -> Response:
    st = state(request)
    who = await st.auth.principal(request, request.query_params.get("uid"), public=False)
    await WebhookRepository(st.db).rotate_secret(who.uid, st.box.encrypt(new_signing_secret()),
                                                 st.settings.webhook_secret_overlap_seconds)
    current, previous, until = await signing_secrets(st.db, st.box, who.uid)
    return JSON(_secret_body(current, previous, until))


def _secret_body(current: str, previous: str | None, until: str | None) -> dict[str, Any]:
    body: dict[str, Any] = {"key": current}
    if previous is not None:
        body["previous_key"] = previous
        body["previous_valid_until"] = until
    return body


def _iso(v: Any) -> Any:
    return v.isoformat().replace("+00:00", "Z") if hasattr(v, "isoformat") else v


@api("Completion webhook deliveries of a task, every attempt", tags=("webhooks",), auth="bearer",
     path=TaskPath, query=UidQuery, ok={200: Deliveries}, errors=READ)
async def list_deliveries(request: Request) -> Response:
    st = state(request)
    who = await st.auth.principal(request, request.query_params.get("uid"), public=False)
    task = await owned_task(request, who.uid)
    events = await WebhookRepository(st.db).for_task(task["id"])
    return JSON({
        "task_id": task["id"], "job_id": task["job_id"], "webhook": task["webhook"],
        "webhook_events_filter": task["webhook_events"],
        "deliveries": [{
            "id": f"whevt_{e['id']}", "event": e["event"], "url": e["url"], "state": e["state"],
            "created_at": _iso(e["created_at"]),
            "next_attempt_at": _iso(e["next_attempt_at"]) if e["state"] == "pending" else None,
            "attempts": e["tries"],
        } for e in events],
    })
