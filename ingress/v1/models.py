"""GET /v1/models (and /v1/models/{model}): the models the caller's stored keys can reach, in OpenAI's list shape.

OpenRouter's list is public and the same for everyone: cached once (Redis, TTL
``v1_models_ttl_seconds``). OpenAI's depends on the key's organisation: cached per key (by hash).
Listing is not a task: it is free, and runs here rather than through a pool.
"""

from __future__ import annotations

import hashlib
from typing import Any

import httpx
import orjson
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response

from ingress.api_models import V1Model, V1ModelList
from ingress.api_requests import ModelPath
from ingress.api_spec import api
from ingress.responses import JSON
from ingress.state import AppState, state
from ingress.v1.routing import stored_keys
from jobs import keys
from jobs.errors import BadRequest, NotFound, RateLimited, UpstreamError
from storage.accounts import AccountRepository


def _client(request: Request) -> httpx.AsyncClient:
    app = request.app
    c: httpx.AsyncClient | None = getattr(app.state, "v1_http", None)
    if c is None:
        c = httpx.AsyncClient(timeout=state(request).settings.v1_models_timeout_seconds,
                              headers={"User-Agent": "SyncNode/0.1"})
        app.state.v1_http = c
    return c


async def close(app: Starlette) -> None:
    c: httpx.AsyncClient | None = getattr(app.state, "v1_http", None)
    if c is not None:
        await c.aclose()
        app.state.v1_http = None


def _model(m: dict[str, Any], owner: str) -> dict[str, Any]:
    mid = str(m.get("id", ""))
    return {**m, "id": mid, "object": "model", "created": int(m.get("created") or 0),
            "owned_by": m.get("owned_by") or (mid.split("/", 1)[0] if "/" in mid else owner)}


async def _fetch(request: Request, provider: str, url: str, key: str, key_name: str) -> list[dict[str, Any]]:
    try:
        resp = await _client(request).get(url, headers={"Authorization": f"Bearer {key}"})
    except httpx.HTTPError as e:
        raise UpstreamError(f"{provider}: listing models failed ({type(e).__name__})")
    if resp.status_code == 429:
        raise RateLimited(f"{provider} rate-limited the model listing", headers={"Retry-After": "1"})
    if 400 <= resp.status_code < 500:
        # The stored key is the caller's to fix, as a provider 4xx on a chat call is (a 400 there too).
        raise BadRequest(f"{provider} answered {resp.status_code} to the model listing with your stored "
                         f"{key_name}: check it, or replace it with POST /api-keys")
    if resp.status_code >= 300:
        raise UpstreamError(f"{provider} answered {resp.status_code} to the model listing")
    try:
        data = resp.json().get("data")
    except (ValueError, AttributeError):
        data = None
    if not isinstance(data, list):
        raise UpstreamError(f"{provider}: the model listing was not a list")
    return [_model(m, provider.lower()) for m in data if isinstance(m, dict)]


async def _cached(st: AppState, request: Request, provider: str, scope: str, url: str,
                  key: str, key_name: str) -> list[dict[str, Any]]:
    ck = keys.models_cache(provider, scope)
    hit = await st.redis.get(ck)
    if hit is not None:
        out: list[dict[str, Any]] = orjson.loads(hit)
        return out
    models = await _fetch(request, provider, url, key, key_name)
    await st.redis.set(ck, orjson.dumps(models), ex=st.settings.v1_models_ttl_seconds)
    return models


async def _key(st: AppState, uid: str, name: str) -> str:
    ct = await AccountRepository(st.db).provider_key(uid, name)
    assert ct is not None
    return st.box.decrypt(ct)


async def _models(request: Request) -> list[dict[str, Any]]:
    st = state(request)
    who = await st.auth.principal(request, None, public=False)
    have = await stored_keys(st.db, who.uid)
    data: list[dict[str, Any]] = []
    s = st.settings
    if "chatgpt_key" in have:
        key = await _key(st, who.uid, "chatgpt_key")
        scope = hashlib.sha256(key.encode()).hexdigest()[:32]
        data += await _cached(st, request, "OpenAI", scope, f"{s.openai_base_url}/models", key, "chatgpt_key")
    if "openrouter_key" in have:
        key = await _key(st, who.uid, "openrouter_key")
        data += await _cached(st, request, "OpenRouter", "all", f"{s.openrouter_base_url}/models", key,
                             "openrouter_key")
    return data


@api("The models the caller's stored keys can reach", tags=("v1",), auth="bearer", ok={200: V1ModelList},
     errors=(400, 401, 403, 429, 502))
async def list_models(request: Request) -> Response:
    return JSON({"object": "list", "data": await _models(request)})


@api("One model the caller's stored keys can reach (the OpenAI SDKs' models.retrieve)", tags=("v1",),
     auth="bearer", path=ModelPath, ok={200: V1Model}, errors=(400, 401, 403, 404, 429, 502))
async def retrieve_model(request: Request) -> Response:
    wanted = request.path_params["model"]
    for m in await _models(request):
        if m["id"] == wanted:
            return JSON(m)
    raise NotFound(f"The model '{wanted[:200]}' does not exist or your stored keys cannot reach it",
                   code="model_not_found", param="model")
