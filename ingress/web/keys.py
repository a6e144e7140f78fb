"""The account's own SyncNode API keys: list (by prefix), create (shown once), revoke."""

from __future__ import annotations

from datetime import datetime

from starlette.requests import Request
from starlette.responses import Response

from ingress.api_models import ApiKeyCreated, ApiKeyList, KeyRevoked
from ingress.api_requests import KeyPrefixPath, UidQuery
from ingress.api_spec import READ, api
from ingress.responses import JSON
from ingress.state import state
from jobs.errors import Conflict, NotFound
from storage.secrets import hash_api_key, new_api_key
from storage.web import ApiKeyRepository


def _iso(v: datetime | None) -> str | None:
    return None if v is None else v.isoformat().replace("+00:00", "Z")


@api("Your SyncNode API keys, by prefix", tags=("keys",), auth="bearer", query=UidQuery, ok={200: ApiKeyList},
     errors=READ)
async def list_keys(request: Request) -> Response:
    st = state(request)
    who = await st.auth.principal(request, request.query_params.get("uid"), public=False)
    rows = await ApiKeyRepository(st.db).list(who.uid)
    return JSON({"uid": who.uid, "keys": [
        {"prefix": r["prefix"], "created_at": _iso(r["created_at"]), "revoked_at": _iso(r["revoked_at"]),
         "active": r["revoked_at"] is None} for r in rows]})


@api("Create a SyncNode API key (shown once)", tags=("keys",), auth="bearer", query=UidQuery,
     ok={201: ApiKeyCreated}, errors=READ)
async def create_key(request: Request) -> Response:
    st = state(request)
    who = await st.auth.principal(request, request.query_params.get("uid"), public=False)
    key, limit = new_api_key(), st.settings.max_api_keys_per_account
    if not await ApiKeyRepository(st.db).add_capped(who.uid, hash_api_key(key), key[:8], limit):
        raise Conflict(f"Too many API keys: this account already has {limit} active keys; revoke one first")
    return JSON({"api_key": key, "prefix": key[:8]}, status_code=201)


@api("Revoke the API key with this prefix", tags=("keys",), auth="bearer", path=KeyPrefixPath, query=UidQuery,
     ok={200: KeyRevoked}, errors=(*READ, 409))
async def revoke_key(request: Request) -> Response:
    st = state(request)
    who = await st.auth.principal(request, request.query_params.get("uid"), public=False)
    prefix = request.path_params["prefix"]
    if "\x00" in prefix:  # Postgres text cannot hold it: no key has such a prefix
        raise NotFound("No API key with this prefix on this account")
    repo = ApiKeyRepository(st.db)
    revoked = await repo.revoke(who.uid, prefix)
    if revoked is None:
        raise Conflict("This is the account's last active API key: create another one first (POST /keys), "
                       "or nothing could call the API for this account again")
    if not revoked and not await repo.exists(who.uid, prefix):
        raise NotFound("No API key with this prefix on this account")
    st.auth.forget_account(who.uid)
    return JSON({"revoked": revoked, "prefix": prefix})
