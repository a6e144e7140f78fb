"""Who is calling (CONTRACT §3): a SyncNode API key, a Supabase access token, or, when the
operator opts in, a bare uid on the reference's public endpoints."""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import asyncpg
import httpx
import jwt
from redis.asyncio import Redis
from starlette.requests import Request

from jobs.errors import Forbidden, NotFound, Unauthorized
from jobs.logs import UID
from jobs.settings import Settings, to_micros
from storage.accounts import AccountRepository
from storage.secrets import API_KEY_PREFIX, hash_api_key
from storage.sessions import Session, SessionStore
from storage.web import LoginRepository

# The web UI's session cookie (ingress/web): a credential for the JSON API when no header is sent.
SESSION_COOKIE = "sn_session"

if TYPE_CHECKING:
    from ingress.limits import Limiter


@dataclass(frozen=True, slots=True)
class Principal:
    uid: str
    via: str  # "api_key" | "jwt" | "uid" | "session"


class _TTLCache:
    """A small LRU with expiry: API keys are looked up on every request, and never change."""

    def __init__(self, size: int, ttl: float) -> None:
        self.size, self.ttl = size, ttl
        self._d: OrderedDict[Any, tuple[float, Any]] = OrderedDict()

    def get(self, k: Any) -> Any:
        hit = self._d.get(k)
        if hit is None or hit[0] < time.monotonic():
            return None
        self._d.move_to_end(k)
        return hit[1]

    def drop_value(self, v: Any) -> None:
        for k in [k for k, hit in self._d.items() if hit[1] == v]:
            del self._d[k]

    def put(self, k: Any, v: Any) -> None:
        self._d[k] = (time.monotonic() + self.ttl, v)
        self._d.move_to_end(k)
        while len(self._d) > self.size:
            self._d.popitem(last=False)


class Authenticator:
    def __init__(self, settings: Settings, db: asyncpg.Pool, redis: Redis | None = None) -> None:
        self.settings = settings
        self.db = db
        self.sessions = SessionStore(redis, settings.session_ttl_seconds,
                                     settings.max_sessions_per_account) if redis is not None else None
        self._keys = _TTLCache(50_000, 60.0)
        self._provisioned = _TTLCache(50_000, 3600.0)
        self._jwks: jwt.PyJWKSet | None = None
        self._jwks_at = 0.0
        self._jwks_lock = asyncio.Lock()
        # Requests per second per account (ingress/limits.py), taken once per authenticated request.
        self.limiter: Limiter | None = None

    def require_credential(self, request: Request, *, public: bool) -> None:
        """Refuse a request that cannot authenticate before its body is read (401, not 400/413)."""
        if ("authorization" not in request.headers and not (public and self.settings.allow_uid_only)
                and not self._has_session(request)):
            raise Unauthorized("Missing credential: send 'Authorization: Bearer <your API key>'")

    async def early(self, request: Request, *, public: bool) -> Principal | None:
        """Authenticate from the headers alone, before the body is read: a caller without a
        valid credential costs one header check and one cached lookup, never a 15 MiB read.
        None only in uid-only mode without a header or session, where the body names the uid."""
        self.require_credential(request, public=public)
        if "authorization" not in request.headers and not self._has_session(request):
            return None
        return await self.principal(request, None, public=public)

    async def confirm(self, request: Request, early: Principal | None, claimed_uid: str | None, *,
                      public: bool) -> Principal:
        """:meth:`early`'s caller, checked against the uid the body names (if any)."""
        if early is None:
            return await self.principal(request, claimed_uid, public=public)
        if claimed_uid is not None and claimed_uid != early.uid:
            raise Forbidden("uid does not match the credential's account")
        return early

    async def principal(self, request: Request, claimed_uid: str | None, *, public: bool) -> Principal:
        """Authenticate, then check a uid named in the body or query is the caller's own; then
        take one request of the account's rate limit (429 before any body is read)."""
        p = await self._principal(request, claimed_uid, public=public)
        if self.limiter is not None and not request.scope.get("syncnode.rate_checked"):
            request.scope["syncnode.rate_checked"] = True
            await self.limiter.check_rate(request, p.uid)
        return p

    async def _principal(self, request: Request, claimed_uid: str | None, *, public: bool) -> Principal:
        header = request.headers.get("authorization", "")
        token = header[7:].strip() if header[:7].lower() == "bearer " else ""
        if token:
            p = await self._from_token(token)
        elif not header and self._has_session(request):
            p = await self._from_session(request)
        elif public and self.settings.allow_uid_only and claimed_uid:
            if "\x00" in claimed_uid or not await AccountRepository(self.db).exists(claimed_uid):
                raise NotFound("Unknown uid")
            UID.set(claimed_uid)
            return Principal(claimed_uid, "uid")
        elif header:
            raise Unauthorized("Authorization header must be 'Bearer <API key or access token>'")
        else:
            raise Unauthorized("Missing credential: send 'Authorization: Bearer <your API key>'")
        UID.set(p.uid)  # the access line and every log line after this one name the account
        if claimed_uid is not None and claimed_uid != p.uid:
            raise Forbidden("uid does not match the credential's account")
        return p

    def _has_session(self, request: Request) -> bool:
        return self.sessions is not None and SESSION_COOKIE in request.cookies

    async def _from_session(self, request: Request) -> Principal:
        from ingress.web.csrf import check_csrf  # the web package imports this module

        assert self.sessions is not None
        session = await self.sessions.get(request.cookies[SESSION_COOKIE])
        if session is None:
            raise Unauthorized("Your session has ended: sign in again")
        check_csrf(request, session.csrf, self.settings)
        ended = await self.session_ended(session)
        if ended:
            raise Unauthorized(ended)
        return Principal(session.uid, "session")

    async def session_ended(self, session: Session) -> str | None:
        """Why a stored session no longer signs anyone in (the API key it was opened with was
        revoked, the password changed), else None. Pages ask this too, so a dead session gets the
        sign-in page rather than a shell whose every call answers 401."""
        if session.key_hash and await self._key_uid(bytes.fromhex(session.key_hash)) != session.uid:
            return "Your session has ended: the API key it was opened with was revoked"
        if session.login_stamp and await LoginRepository(self.db).login_stamp(session.uid) != session.login_stamp:
            return "Your session has ended: the password changed, sign in again"
        return None

    async def _key_uid(self, digest: bytes) -> str | None:
        uid: str | None = self._keys.get(digest)
        if uid is None:
            uid = await AccountRepository(self.db).uid_for_api_key(digest)
            if uid is not None:
                self._keys.put(digest, uid)
        return uid

    async def principal_for_key(self, token: str) -> str:
        """The uid of a SyncNode API key (the web sign-in with a key); never a JWT."""
        if not token.startswith(API_KEY_PREFIX):
            raise Unauthorized("Invalid API key")
        return (await self._from_token(token)).uid

    def forget_account(self, uid: str) -> None:
        """Drop this process's cached API keys of an account (after a revoke); other ingress
        processes keep theirs for at most the cache's 60 s."""
        self._keys.drop_value(uid)

    async def _from_token(self, token: str) -> Principal:
        if token.startswith(API_KEY_PREFIX):
            digest = hash_api_key(token)
            uid = self._keys.get(digest)
            if uid is None:
                uid = await AccountRepository(self.db).uid_for_api_key(digest)
                if uid is None:
                    raise Unauthorized("Invalid API key")
                self._keys.put(digest, uid)
            return Principal(uid, "api_key")
        if token.count(".") == 2:
            uid = await self._verify_jwt(token)
            if self._provisioned.get(uid) is None:
                await AccountRepository(self.db).ensure(uid, to_micros(self.settings.starting_balance))
                self._provisioned.put(uid, True)
            return Principal(uid, "jwt")
        raise Unauthorized("Invalid API key")

    async def _verify_jwt(self, token: str) -> str:
        s = self.settings
        if s.supabase_jwt_secret is None and s.supabase_jwks_url is None:
            raise Unauthorized("Access tokens are not accepted here (JWT auth is off): use an API key")
        try:
            header = jwt.get_unverified_header(token)
            alg = header.get("alg", "")
            if alg == "HS256":
                if s.supabase_jwt_secret is None:
                    raise Unauthorized("HS256 access tokens are not accepted (no SUPABASE_JWT_SECRET)")
                key: Any = s.supabase_jwt_secret.get_secret_value()
            else:
                jwk = await self._jwks_key(header.get("kid"))
                # The key decides the algorithm, never the token's own header (alg confusion).
                if jwk.algorithm_name != alg:
                    raise Unauthorized("Invalid access token: algorithm does not match its signing key")
                key = jwk.key
            claims = jwt.decode(token, key, algorithms=[alg], audience=s.supabase_audience,
                                options={"require": ["sub", "exp"]})
        except (jwt.PyJWTError, TypeError, ValueError) as e:
            raise Unauthorized(f"Invalid access token: {e}")
        sub = claims.get("sub")
        if not isinstance(sub, str) or not sub:
            raise Unauthorized("Invalid access token: no subject")
        return sub

    async def _jwks_key(self, kid: str | None) -> jwt.PyJWK:
        if self.settings.supabase_jwks_url is None:
            raise Unauthorized("Asymmetric access tokens are not accepted (no SUPABASE_JWKS_URL)")
        for refresh in (False, True):
            jwks = await self._load_jwks(force=refresh)
            for k in jwks.keys:
                if kid is None or k.key_id == kid:
                    return k
        raise Unauthorized("Invalid access token: unknown signing key")

    async def _load_jwks(self, force: bool) -> jwt.PyJWKSet:
        async with self._jwks_lock:
            fresh = time.monotonic() - self._jwks_at < (30 if force else 600)
            if self._jwks is not None and fresh:
                return self._jwks
            assert self.settings.supabase_jwks_url is not None
            try:
                async with httpx.AsyncClient(timeout=5) as client:
                    r = await client.get(self.settings.supabase_jwks_url)
                    r.raise_for_status()
                    self._jwks = jwt.PyJWKSet.from_dict(r.json())
            except (httpx.HTTPError, jwt.PyJWTError, ValueError) as e:
                if self._jwks is None:
                    raise Unauthorized(f"Cannot verify access token: JWKS unavailable ({e})")
            self._jwks_at = time.monotonic()
            assert self._jwks is not None
            return self._jwks

