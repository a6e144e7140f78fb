"""OpenRouter and OpenAI chat completions (the same wire format)."""

from __future__ import annotations

from typing import Any

import httpx

from workers.providers.errors import ProviderRejected, ProviderRetryable
from workers.providers.http import classify


async def complete(client: httpx.AsyncClient, provider: str, key: str, body: dict[str, Any]) -> dict[str, Any]:
    """One exchange; raises ProviderError. The retry loop is the caller's (``http.call``)."""
    resp = await client.post("/chat/completions", json=body, headers={"Authorization": f"Bearer {key}"})
    classify(provider, resp)
    try:
        data = resp.json()
    except ValueError:
        raise ProviderRetryable(provider, "response was not JSON", resp.status_code)
    if not isinstance(data, dict):
        raise ProviderRetryable(provider, "response was not a JSON object", resp.status_code)
    err = data.get("error")
    if err and not data.get("choices"):
        # OpenRouter reports failures after routing as HTTP 200 with an error body.
        code = err.get("code") if isinstance(err, dict) else None
        msg = str(err.get("message") if isinstance(err, dict) else err)
        if isinstance(code, int) and (code >= 500 or code in (408, 429)):
            raise ProviderRetryable(provider, msg, code)
        raise ProviderRejected(provider, msg, code if isinstance(code, int) else None)
    return data
