"""Replicate's predictions API on its wire format (``../shared/notes/jobs.md`` §1).

Creating a prediction is not idempotent and Replicate has no idempotency key, so ``create``
retries only when nothing can have been created (connect error, 429 / 503 answer); an
exchange that failed after the body was sent raises :class:`CreateUncertain` instead.
"""

from __future__ import annotations

import json
from typing import Any

import httpx

from jobs.model_refs import is_version
from workers.providers.errors import ProviderError, ProviderRejected, ProviderRetryable
from workers.providers.http import bearer_get, classify, send

PROVIDER = "Replicate"
# Replicate's own terminal statuses; ``aborted`` is newer than most clients know.
TERMINAL = frozenset({"succeeded", "failed", "canceled", "aborted"})


class CreateUncertain(ProviderError):
    """The create request was sent but no answer came back: a prediction may exist."""


def create_route(model: str, input_: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """``owner/name`` runs the latest version through the model's route; a version pins one."""
    if is_version(model):
        return "/predictions", {"version": model, "input": input_}
    if ":" in model:
        return "/predictions", {"version": model.split(":", 1)[1], "input": input_}
    owner, name = model.split("/", 1)
    return f"/models/{owner}/{name}/predictions", {"input": input_}


def _auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def _json(resp: httpx.Response) -> dict[str, Any]:
    classify(PROVIDER, resp)
    data = resp.json()
    if not isinstance(data, dict) or "id" not in data:
        raise ProviderRetryable(PROVIDER, f"unexpected answer: {resp.text[:200]}", resp.status_code)
    return data


def _timeout(seconds: float | None) -> Any:
    return httpx.USE_CLIENT_DEFAULT if seconds is None else seconds


async def create(client: httpx.AsyncClient, key: str, model: str, input_: dict[str, Any], *,
                 webhook: str | None, cancel_after_s: int, timeout: float | None = None) -> dict[str, Any]:
    path, body = create_route(model, input_)
    if webhook:
        body["webhook"] = webhook
        body["webhook_events_filter"] = ["completed"]
    headers = {**_auth(key), "Cancel-After": f"{max(5, cancel_after_s)}s"}
    try:
        resp = await client.post(path, json=body, headers=headers, timeout=_timeout(timeout))
    except (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout) as e:
        raise ProviderRetryable(PROVIDER, f"{type(e).__name__}: {e}")  # never reached Replicate
    except httpx.TransportError as e:
        raise CreateUncertain(PROVIDER, f"no answer to the create request ({type(e).__name__})")
    if resp.status_code >= 500 and resp.status_code not in (502, 503):
        # A 500/504 may come after the prediction was made: retrying could pay twice.
        raise CreateUncertain(PROVIDER, f"create answered {resp.status_code}", resp.status_code)
    return _json(resp)


async def get(client: httpx.AsyncClient, key: str, prediction_id: str) -> dict[str, Any]:
    resp = await send(client, bearer_get(client, f"/predictions/{prediction_id}", key))
    try:
        return _json(resp)
    except json.JSONDecodeError:
        raise
    except (RecursionError, ValueError):
        # Valid JSON past a parser limit (nesting past the recursion limit, an integer past 4300
        # digits): a model's output can do that on purpose, and it reads the same on every poll.
        raise ProviderRejected(PROVIDER, "the prediction's output cannot be read (nested too deeply "
                               "or a number too long)", resp.status_code)


async def cancel(client: httpx.AsyncClient, key: str, prediction_id: str) -> dict[str, Any]:
    return _json(await client.post(f"/predictions/{prediction_id}/cancel", headers=_auth(key)))


async def created_since(client: httpx.AsyncClient, key: str, since_iso: str,
                        max_pages: int = 5, timeout: float | None = None) -> list[dict[str, Any]]:
    """Predictions created at or after ``since_iso`` (newest first), a few pages at most."""
    out: list[dict[str, Any]] = []
    url: str | None = "/predictions"
    params: dict[str, str] | None = {"created_after": since_iso}
    for _ in range(max_pages):
        if url is None:
            break
        resp = await client.get(url, params=params, headers=_auth(key), timeout=_timeout(timeout))
        classify(PROVIDER, resp)
        page = resp.json()
        out.extend(page.get("results") or [])
        url, params = page.get("next"), None
    return out


async def webhook_secret(client: httpx.AsyncClient, key: str, timeout: float | None = None) -> str:
    resp = await client.get("/webhooks/default/secret", headers=_auth(key), timeout=_timeout(timeout))
    classify(PROVIDER, resp)
    return str(resp.json()["key"])
