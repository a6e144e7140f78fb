"""Accounts, credit, balance, provider keys and billing history."""

from __future__ import annotations

import hmac
import re
import unicodedata
import uuid
from decimal import Decimal
from typing import Any, NewType

import asyncpg
from starlette.requests import Request
from starlette.responses import Response

from ingress.api_models import AccountCreated, Balance, BillingHistory, ProviderKeys
from ingress.api_requests import EMAIL_MAX, EMAIL_PATTERN, KEY_CHARS, HistoryQuery, ProviderKeysUpdate, UidQuery
from ingress.api_spec import READ, api
from ingress.body import read_json
from ingress.params import int_param
from ingress.responses import JSON
from ingress.schemas import AccountCreate, AdminCredit
from ingress.state import AppState, state
from jobs.errors import BadRequest, Conflict, Forbidden, NotFound, RateLimited, Unauthorized
from jobs.names import PROVIDER_KEY_NAMES
from jobs.settings import to_dollars, to_micros
from storage.accounts import AccountRepository
from storage.db import Conn
from storage.ledger import LedgerRepository
from storage.secrets import hash_api_key, mask, new_api_key
from storage.sessions import FailureCounter


def _is_admin(st: AppState, request: Request) -> bool:
    token = st.settings.admin_token
    header = request.headers.get("authorization", "")
    given = header[7:].strip() if header[:7].lower() == "bearer " else ""
    # Bytes: compare_digest refuses non-ASCII str, and a header may carry any latin-1 byte.
    return token is not None and bool(given) and hmac.compare_digest(
        given.encode("latin-1", "replace"), token.get_secret_value().encode())


def _require_admin(st: AppState, request: Request) -> None:
    if st.settings.admin_token is None:
        raise Forbidden("The admin API is off: set SYNCNODE_ADMIN_TOKEN to enable it")
    if "authorization" not in request.headers:
        raise Unauthorized("Admin token required: 'Authorization: Bearer <SYNCNODE_ADMIN_TOKEN>'")
    if not _is_admin(st, request):
        raise Forbidden("Admin token required: 'Authorization: Bearer <SYNCNODE_ADMIN_TOKEN>'")


# What valid_email returns: create_account takes nothing else, so no way in skips the rule.
Email = NewType("Email", str)
_EMAIL = re.compile(EMAIL_PATTERN)
# What a CLI argument that is not UTF-8 decodes to. JSON cannot carry them, and EMAIL_PATTERN
# cannot name them: the fuzzer's regex engine (Rust's) refuses the range.
_SURROGATE = re.compile(r"[\ud800-\udfff]")


def valid_email(raw: str) -> Email:
    """An account's email by the one rule (EMAIL_PATTERN, which /openapi.json states), lower-cased
    and in Unicode's composed form (NFC: "ü" typed as u + combining diaeresis is the same text,
    and must find the same account) without the blanks around it; else BadRequest. Every way
    in calls this: POST /accounts, the web sign-up and sign-in, `syncnode accounts create` and
    `set-password`."""
    if len(raw) > EMAIL_MAX:
        raise BadRequest(f"Invalid email: longer than {EMAIL_MAX} characters")
    m = _EMAIL.fullmatch(raw)
    if m is None or _SURROGATE.search(raw):
        raise BadRequest("Invalid email: expected name@example.com, without spaces or control characters")
    return Email(unicodedata.normalize("NFC", m[1].lower()))


async def create_account(db: Conn, email: Email | None,
                         grant: Decimal) -> dict[str, Any]:
    """Shared by POST /accounts, the web sign-up and `syncnode accounts create`; call it in a
    transaction. An email another account has (its own or its sign-in) is a Conflict."""
    uid, key = str(uuid.uuid4()), new_api_key()
    repo = AccountRepository(db)
    if email is not None and not await repo.claim_email(email):
        raise Conflict("An account with this email already exists")
    balance = await repo.create(uid, email, to_micros(grant))
    await repo.add_api_key(uid, hash_api_key(key), key[:8])
    return {"uid": uid, "api_key": key, "balance": to_dollars(balance)}


async def signup_allowance(st: AppState, request: Request) -> None:
    """Count one open sign-up for the client's address: each is granted starting_balance, so an
    address gets signup_max_per_address per window (429 beyond). Admins are not counted."""
    s, address = st.settings, request.client.host if request.client else "unknown"
    wait = await FailureCounter(st.redis, s.signup_window_seconds).reserve(
        [("signup", address, s.signup_max_per_address)])
    if wait:
        raise RateLimited(f"Too many sign-ups from this address: try again in {wait} s",
                          headers={"Retry-After": str(wait)})


@api("Create an account with an API key (admin token, or open sign-up)", tags=("accounts",), auth="signup",
     body=AccountCreate, body_required=False, ok={201: AccountCreated}, errors=(400, 403, 409, 413, 429))
async def post_accounts(request: Request) -> Response:
    st = state(request)
    admin = _is_admin(st, request)
    if not (st.settings.open_signup or admin):
        raise Forbidden("Sign-up is closed: an admin token is required (or set SYNCNODE_OPEN_SIGNUP=true)")
    body = AccountCreate.model_validate(await read_json(request, 64 << 10)
                                        if request.headers.get("content-length") not in (None, "0") else {})
    email = None if body.email is None else valid_email(body.email)
    if not admin:
        # As on the web sign-up: a 409 tells whether an email has an account, and counts here.
        await signup_allowance(st, request)
    async with st.db.acquire() as conn, conn.transaction():
        created = await create_account(conn, email, st.settings.starting_balance)
    return JSON(created, status_code=201)


@api("Add or remove credit (admin token)", tags=("admin",), auth="admin", body=AdminCredit, ok={200: Balance},
     errors=(400, 401, 403, 404, 413))
async def admin_credit(request: Request) -> Response:
    st = state(request)
    _require_admin(st, request)
    body = AdminCredit.model_validate(await read_json(request, 64 << 10))
    try:
        balance = await AccountRepository(st.db).credit(
            body.uid, to_micros(Decimal(str(body.amount))), "credit", body.reason)
    except asyncpg.CheckViolationError:
        raise BadRequest("Invalid amount: the balance cannot go below zero")
    if balance is None:
        raise NotFound("Unknown uid")
    return JSON({"balance": to_dollars(balance)})


@api("Current balance in dollars", tags=("accounts",), auth="bearer", query=UidQuery, ok={200: Balance},
     errors=READ)
async def balance(request: Request) -> Response:
    st = state(request)
    who = await st.auth.principal(request, request.query_params.get("uid"), public=True)
    micros = await AccountRepository(st.db).balance(who.uid)
    if micros is None:
        raise NotFound("Unknown uid")
    return JSON({"balance": to_dollars(micros)})


@api("Stored provider keys, masked", tags=("accounts",), auth="bearer", query=UidQuery, ok={200: ProviderKeys},
     errors=READ)
async def get_api_keys(request: Request) -> Response:
    st = state(request)
    who = await st.auth.principal(request, request.query_params.get("uid"), public=False)
    masked = await AccountRepository(st.db).masked_provider_keys(who.uid)
    return JSON({name: masked.get(name) for name in PROVIDER_KEY_NAMES})


@api("Store (or, with null or \"\", remove) provider keys", tags=("accounts",), auth="bearer",
     body=ProviderKeysUpdate, ok={200: ProviderKeys}, errors=(*READ, 413))
async def post_api_keys(request: Request) -> Response:
    st = state(request)
    early = await st.auth.early(request, public=False)
    body = await read_json(request, 64 << 10)
    uid = body.pop("uid", None)
    if uid is not None and not isinstance(uid, str):
        raise BadRequest("Invalid uid: must be a string")
    who = await st.auth.confirm(request, early, uid, public=False)
    updates: dict[str, tuple[bytes, str] | None] = {}
    for name, value in body.items():
        if name not in PROVIDER_KEY_NAMES:
            raise BadRequest(f"Unknown key name {name!r}: expected one of {', '.join(PROVIDER_KEY_NAMES)}")
        if value is None or value == "":
            updates[name] = None
            continue
        if not isinstance(value, str) or len(value) > 1000 or not re.fullmatch(KEY_CHARS, value):
            raise BadRequest(f"Invalid {name}: must be a key string of printable ASCII without spaces "
                             "(at most 1000 characters)")
        updates[name] = (st.box.encrypt(value), mask(value))
    if not updates:
        raise BadRequest(f"Send at least one of {', '.join(PROVIDER_KEY_NAMES)}")
    repo = AccountRepository(st.db)
    async with st.db.acquire() as conn, conn.transaction():
        await AccountRepository(conn).set_provider_keys(who.uid, updates)
    masked = await repo.masked_provider_keys(who.uid)
    return JSON({name: masked.get(name) for name in PROVIDER_KEY_NAMES})


@api("Ledger entries with the balance after each, newest first; page with before=<id>", tags=("billing",),
     auth="bearer", query=HistoryQuery, ok={200: BillingHistory}, errors=READ)
async def billing_history(request: Request) -> Response:
    """Every ledger row, newest first; ``?before=<id>&limit=`` pages by id (keyset, not OFFSET)."""
    st = state(request)
    who = await st.auth.principal(request, request.query_params.get("uid"), public=False)
    limit = int_param(request, "limit", int_param(request, "size", 20, 1, 100), 1, 100)
    raw_before = request.query_params.get("before")
    before = int_param(request, "before", 0, 1, 2**62) if raw_before is not None else None
    rows = await LedgerRepository(st.db).history(who.uid, limit, before)
    return JSON({
        "history": [{"id": r["id"], "kind": r["kind"], "amount": to_dollars(r["amount_micros"]),
                     "balance_after": to_dollars(r["balance_after"]), "job_id": r["job_id"],
                     "stripe_id": r["stripe_id"], "reason": r["reason"],
                     "created_at": r["created_at"].isoformat().replace("+00:00", "Z")} for r in rows],
        "limit": limit,
        "next_before": rows[-1]["id"] if len(rows) == limit else None,
    })
