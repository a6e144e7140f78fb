"""The session cookie: set on sign-in, cleared on sign-out, read by pages."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from ingress.auth import SESSION_COOKIE
from ingress.state import AppState, state
from storage.sessions import Session, SessionStore


def store(st: AppState) -> SessionStore:
    return SessionStore(st.redis, st.settings.session_ttl_seconds, st.settings.max_sessions_per_account)


async def current(request: Request) -> Session | None:
    """The signed-in session, or None: no cookie, expired, or ended (its key revoked, the
    password changed) by the same rule the JSON API applies to the cookie."""
    token = request.cookies.get(SESSION_COOKIE)
    st = state(request)
    session = await store(st).get(token) if token else None
    if session is None or await st.auth.session_ended(session):
        return None
    return session


def set_cookie(response: Response, st: AppState, token: str) -> None:
    response.set_cookie(SESSION_COOKIE, token, max_age=st.settings.session_ttl_seconds, path="/",
                        httponly=True, samesite="lax", secure=st.settings.public_url.startswith("https://"))


def clear_cookie(response: Response, st: AppState) -> None:
    response.delete_cookie(SESSION_COOKIE, path="/", httponly=True, samesite="lax",
                           secure=st.settings.public_url.startswith("https://"))
