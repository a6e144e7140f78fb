"""Sign-up, sign-in (email + password, or an API key) and sign-out: JSON endpoints the sign-in
pages post to. Each success sets the session cookie; nothing here moves money beyond
create_account's starting grant."""

from __future__ import annotations

from typing import Any

import asyncpg
from starlette.requests import Request
from starlette.responses import Response

from ingress.accounts import Email, create_account, signup_allowance, valid_email
from ingress.api_models import SignedIn, SignedOut
from ingress.api_requests import SignInRequest, SignUpRequest
from ingress.api_spec import api
from ingress.auth import SESSION_COOKIE
from ingress.body import read_json
from ingress.responses import JSON
from ingress.state import AppState, state
from ingress.web import passwords, sessions
from ingress.web.csrf import check_csrf, check_origin
from jobs.errors import BadRequest, Conflict, Forbidden, RateLimited, Unauthorized
from storage.accounts import AccountRepository
from storage.secrets import hash_api_key
from storage.sessions import FailureCounter
from storage.web import LoginRepository, stamp

# Sign-in and sign-up are refused cross-site: the browser's Origin must be this gateway.
_ORIGIN = {"Origin": "This gateway's own origin"}
_TAKEN = "An account with this email already exists: sign in instead"


def _text(body: dict[str, Any], name: str) -> str:
    v = body.get(name)
    if not isinstance(v, str) or not v:
        raise BadRequest(f"Missing {name} parameter")
    return v


def _email(body: dict[str, Any]) -> Email:
    return valid_email(_text(body, "email"))


async def _signed_in(request: Request, uid: str, body: dict[str, Any], status: int = 200, *,
                     key_hash: str = "", login_stamp: str = "") -> Response:
    st = state(request)
    store = sessions.store(st)
    old = request.cookies.get(SESSION_COOKIE)
    if old:
        await store.delete(old)  # a new sign-in replaces the browser's session, never adds one
    token, s = await store.create(uid, key_hash=key_hash, login_stamp=login_stamp)
    response = JSON({**body, "uid": uid, "csrf_token": s.csrf}, status_code=status)
    sessions.set_cookie(response, st, token)
    return response


def _address(request: Request) -> str:
    return request.client.host if request.client else "unknown"


async def _reserve(fails: FailureCounter, scopes: list[tuple[str, str, int]], what: str) -> None:
    wait = await fails.reserve(scopes)
    if wait:
        raise RateLimited(f"{what}: try again in {wait} s", headers={"Retry-After": str(wait)})


@api("Web UI: create an account with an email and password (open sign-up only); sets the session cookie",
     tags=("web",), auth="none", body=SignUpRequest, headers=_ORIGIN, required_headers=("Origin",),
     ok={201: SignedIn}, errors=(400, 403, 409, 413, 429))
async def signup(request: Request) -> Response:
    st = state(request)
    check_origin(request, st.settings, required=True)
    if not st.settings.open_signup:
        raise Forbidden("Sign-up is closed on this gateway: ask its operator for an account")
    passwords.configure(st.settings.password_hash_concurrency)
    body = await read_json(request, 16 << 10)
    email, password = _email(body), _text(body, "password")
    passwords.check_strength(password)
    # Every sign-up is granted starting_balance: a client address gets a few per window. The
    # 409 below tells whether an email has an account, and this limit is what bounds that too.
    await signup_allowance(st, request)
    if await AccountRepository(st.db).email_taken(email):  # before the slow hash; create_account decides
        raise Conflict(_TAKEN)
    digest = await passwords.hash_password_async(password)
    try:
        async with st.db.acquire() as conn, conn.transaction():
            created = await create_account(conn, email, st.settings.starting_balance)
            login = await LoginRepository(conn).set_password(created["uid"], email, digest)
    except (Conflict, asyncpg.UniqueViolationError):
        raise Conflict(_TAKEN)
    return await _signed_in(request, created["uid"], {"api_key": created["api_key"], "balance": created["balance"]},
                            status=201, login_stamp=login)


async def _verify(st: AppState, email: str, password: str) -> asyncpg.Record | None:
    repo = LoginRepository(st.db)
    row = await repo.by_email(email)
    ok, rehash = await passwords.verify(row["password_hash"] if row else None, password)
    if not ok or row is None:
        return None
    if rehash:
        await repo.rehash(row["uid"], rehash)
    return row


@api("Web UI: sign in with an API key, or an email and password; sets the session cookie", tags=("web",),
     auth="none", body=SignInRequest, headers=_ORIGIN, required_headers=("Origin",), ok={200: SignedIn},
     errors=(400, 401, 403, 413, 429))
async def signin(request: Request) -> Response:
    st = state(request)
    check_origin(request, st.settings, required=True)
    body = await read_json(request, 16 << 10)
    s = st.settings
    passwords.configure(s.password_hash_concurrency)
    fails = FailureCounter(st.redis, s.signin_failure_window_seconds)
    scopes = [("address", _address(request), s.signin_max_failures_per_address)]
    if "api_key" in body:
        key = _text(body, "api_key").strip()
        await _reserve(fails, scopes, "Too many failed sign-ins")
        try:
            who = await st.auth.principal_for_key(key)
        except Unauthorized:
            raise Unauthorized("Invalid API key")  # the reserved attempt stays counted as a failure
        except BaseException:
            await fails.release(scopes)
            raise
        await fails.release(scopes)
        return await _signed_in(request, who, {}, key_hash=hash_api_key(key).hex())
    email, password = _email(body), _text(body, "password")
    scopes.append(("account", email, s.signin_max_failures_per_account))
    # Counted before the (slow) password check, so concurrent guesses cannot all pass the limit.
    await _reserve(fails, scopes, "Too many failed sign-ins")
    try:
        row = await _verify(st, email, password)
    except BaseException:
        await fails.release(scopes)
        raise
    if row is None:
        raise Unauthorized("Wrong email or password")
    await fails.release(scopes[:1])
    await fails.clear("account", email)
    return await _signed_in(request, str(row["uid"]), {}, login_stamp=stamp(row["updated_at"]))


@api("Web UI: end the session (X-CSRF-Token with the cookie)", tags=("web",), auth="none",
     ok={200: SignedOut}, errors=(403,))
async def signout(request: Request) -> Response:
    st = state(request)
    token = request.cookies.get(SESSION_COOKIE)
    store = sessions.store(st)
    current = await store.get(token) if token else None
    if current is not None:
        check_csrf(request, current.csrf, st.settings)
        assert token is not None
        await store.delete(token)
    response = JSON({"signed_out": True})
    sessions.clear_cookie(response, st)
    return response
