"""OpenRouter and OpenAI chat completions, streamed or not, and embeddings (the same wire format)."""

from __future__ import annotations

from collections.abc import AsyncGenerator
from typing import Any

import httpx

from workers.providers.errors import ProviderRejected, ProviderRetryable
from workers.providers.http import classify, json_post, send


async def complete(client: httpx.AsyncClient, provider: str, key: str, body: dict[str, Any]) -> dict[str, Any]:
    """One exchange; raises ProviderError. The retry loop is the caller's (``http.call``)."""
    resp = await send(client, json_post(client, "/chat/completions", body, key))
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


async def stream(client: httpx.AsyncClient, provider: str, key: str,
                 body: dict[str, Any]) -> AsyncGenerator[list[bytes], None]:
    """The ``data:`` payloads of a streamed completion, as sent ([DONE] ends it, not yielded),
    one list per network read: chunks that arrived together are handled (and relayed) together.

    Raises ProviderError for an answer that is not a stream (an HTTP error, OpenRouter's error
    as JSON); an error event inside the stream is the caller's to spot (``raise_stream_error``).
    Leaving the iteration early closes the provider's connection.
    """
    resp = await client.send(json_post(client, "/chat/completions", body, key), stream=True)
    try:
        if resp.status_code >= 300 or "text/event-stream" not in resp.headers.get("content-type", ""):
            await resp.aread()
            classify(provider, resp)
            await _not_a_stream(provider, resp)
        buf = b""
        async for raw in resp.aiter_bytes():
            *lines, buf = (buf + raw).split(b"\n")
            batch: list[bytes] = []
            for line in lines:
                if not line.startswith(b"data:"):
                    continue  # blank separators, ": keep-alive" comments, event:/id: fields
                data = line[5:].strip()
                if data == b"[DONE]":
                    if batch:
                        yield batch
                    return
                batch.append(data)
            if batch:
                yield batch
    finally:
        await resp.aclose()


async def _not_a_stream(provider: str, resp: httpx.Response) -> None:
    try:
        data = resp.json()
    except ValueError:
        raise ProviderRetryable(provider, "answered neither a stream nor JSON", resp.status_code)
    raise_stream_error(provider, data if isinstance(data, dict) else {})
    raise ProviderRetryable(provider, "answered JSON instead of a stream", resp.status_code)


def raise_stream_error(provider: str, data: dict[str, Any]) -> None:
    """Raise the ProviderError an ``{"error": …}`` object stands for (nothing if it has none)."""
    err = data.get("error")
    if not err:
        return
    code = err.get("code") if isinstance(err, dict) else None
    msg = str(err.get("message") if isinstance(err, dict) else err)
    if isinstance(code, int) and not (code >= 500 or code in (408, 429)):
        raise ProviderRejected(provider, msg, code)
    raise ProviderRetryable(provider, msg, code if isinstance(code, int) else None)


async def embed(client: httpx.AsyncClient, provider: str, key: str, body: dict[str, Any]) -> dict[str, Any]:
    """POST /embeddings, passed through; raises ProviderError."""
    resp = await client.send(json_post(client, "/embeddings", body, key))
    classify(provider, resp)
    try:
        data = resp.json()
    except ValueError:
        raise ProviderRetryable(provider, "response was not JSON", resp.status_code)
    if not isinstance(data, dict) or "data" not in data:
        raise_stream_error(provider, data if isinstance(data, dict) else {})
        raise ProviderRetryable(provider, "response held no data", resp.status_code)
    return data
