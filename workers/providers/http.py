"""One httpx client per provider per worker process, and the retry loop every call goes through.

The clients run on the aiohttp transport: the same httpx API and test seams, at a fraction of
the CPU per call of httpx's default transport (see docs/benchmarks.md).
"""

from __future__ import annotations

import asyncio
import random
import time
import weakref
from collections.abc import Awaitable, Callable
from email.utils import parsedate_to_datetime
from typing import Any, TypeVar

import aiohttp
import httpx
import orjson
from httpx_aiohttp import AiohttpTransport

from jobs.metrics import WorkerMetrics
from workers.providers.errors import ProviderError, ProviderRejected, ProviderRetryable, error_field
from workers.providers.retry import MAX_BACKOFF_S, RetryPolicy

T = TypeVar("T")


class _NoCookies(httpx.Cookies):
    """A cookie jar that keeps nothing (httpx's side; aiohttp's gets a DummyCookieJar).

    One client serves every account's calls to a provider: a cookie set in one user's response
    must never ride along on another user's request. (Skipping the jar is also cheaper.)
    """

    def extract_cookies(self, response: httpx.Response) -> None:
        return None


def make_client(base_url: str, *, connect_timeout: float, read_timeout: float, max_connections: int = 200,
                transport: httpx.AsyncBaseTransport | None = None) -> httpx.AsyncClient:
    def session() -> aiohttp.ClientSession:
        connector = aiohttp.TCPConnector(limit=max_connections, keepalive_timeout=30,
                                         ssl=httpx.create_ssl_context())
        return aiohttp.ClientSession(connector=connector, cookie_jar=aiohttp.DummyCookieJar())

    transport = transport or AiohttpTransport(client=session)
    client = httpx.AsyncClient(
        base_url=base_url,
        timeout=httpx.Timeout(read_timeout, connect=connect_timeout, pool=connect_timeout),
        transport=transport,
        headers={"User-Agent": "SyncNode/0.1"},
    )
    client._cookies = _NoCookies()
    _transports[client] = transport
    return client


# The transport of each client ``make_client`` built (httpx keeps its own private).
_transports: weakref.WeakKeyDictionary[httpx.AsyncClient, httpx.AsyncBaseTransport] = weakref.WeakKeyDictionary()


async def send(client: httpx.AsyncClient, request: httpx.Request) -> httpx.Response:
    """``client.send(request)``, read to the end, for a client of ``make_client``: straight to its
    transport. What ``send`` adds on the way — auth, redirects, cookies, event hooks — ours never
    use (no auth, no redirects followed, a jar that keeps nothing, no hooks), and it was ~8 % of
    a chat worker's CPU at c=50 (py-spy). Timeouts ride in ``request.extensions`` as before."""
    transport = _transports.get(client)
    if transport is None:
        return await client.send(request)
    resp = await transport.handle_async_request(request)
    resp.request = request
    try:
        await resp.aread()
    finally:
        await resp.aclose()
    return resp


class _Prepared:
    """What ``build_request`` recomputes for every call and is the same for all of a client's
    calls: the absolute URL of each path, the default headers, the timeout extension."""

    __slots__ = ("urls", "base", "get_headers", "headers", "extensions")

    def __init__(self, client: httpx.AsyncClient) -> None:
        self.urls: dict[str, httpx.URL] = {}
        # The base as httpx merges a path onto it: its raw_path always ends in "/", but str() of a
        # base with no path ("http://host:8080") has none, and "host:8080predictions" is no URL.
        base = client.base_url
        self.base = str(base.copy_with(raw_path=base.raw_path))
        self.get_headers = client.headers.multi_items()
        self.headers = [*self.get_headers, ("Content-Type", "application/json")]
        self.extensions = {"timeout": client.timeout.as_dict()}


_prepared: weakref.WeakKeyDictionary[httpx.AsyncClient, _Prepared] = weakref.WeakKeyDictionary()


def _prep(client: httpx.AsyncClient) -> _Prepared:
    prep = _prepared.get(client)
    if prep is None:
        prep = _prepared[client] = _Prepared(client)
    return prep


def json_post(client: httpx.AsyncClient, path: str, body: Any, key: str) -> httpx.Request:
    """``client.build_request("POST", path, json=body, headers=<bearer key>)`` for a client with
    no cookies, auth or per-call options (ours): the same request, at a fraction of its CPU.
    The body is encoded once by orjson (httpx's ``json=`` goes through the stdlib encoder)."""
    prep = _prep(client)
    url = prep.urls.get(path)
    if url is None:
        url = prep.urls[path] = client._merge_url(path)
    return httpx.Request("POST", url, headers=[*prep.headers, ("Authorization", f"Bearer {key}")],
                         content=orjson.dumps(body), extensions=prep.extensions)


def bearer_get(client: httpx.AsyncClient, path: str, key: str) -> httpx.Request:
    """``client.build_request("GET", path, headers=<bearer key>)``, as ``json_post`` builds its
    POST. For paths that differ per call (a prediction's): the URL is parsed from one string
    instead of merged with the base URL (a quarter of the CPU), and nothing is cached per path."""
    prep = _prep(client)
    return httpx.Request("GET", httpx.URL(prep.base + path.lstrip("/")),
                         headers=[*prep.get_headers, ("Authorization", f"Bearer {key}")],
                         extensions=prep.extensions)


def retry_after_seconds(resp: httpx.Response) -> float | None:
    raw = resp.headers.get("retry-after")
    if not raw:
        return None
    try:
        return max(0.0, float(raw))
    except ValueError:
        try:
            return max(0.0, parsedate_to_datetime(raw).timestamp() - time.time())
        except (TypeError, ValueError):
            return None


def error_details(resp: httpx.Response) -> tuple[str, str | None, str | None]:
    """The provider's own words (OpenAI/OpenRouter ``error.message``, Replicate ``detail``), and
    the ``code`` and ``param`` of an OpenAI-style error object (each None unless ``error_field``
    lets it through): what /v1 passes on for SDK users to branch on."""
    try:
        data: Any = resp.json()
    except ValueError:
        return resp.text[:300] or resp.reason_phrase, None, None
    code = param = None
    if isinstance(data, dict):
        err = data.get("error")
        if isinstance(err, dict):
            code, param = error_field(err.get("code")), error_field(err.get("param"))
            if err.get("message"):
                return str(err["message"]), code, param
        if isinstance(err, str):
            return err, None, None
        if data.get("detail"):
            return str(data["detail"]), code, param
        if data.get("title"):
            return str(data["title"]), code, param
    return resp.text[:300], code, param


def classify(provider: str, resp: httpx.Response) -> None:
    """Raise the right ProviderError for a non-2xx response."""
    if resp.status_code < 300:
        return
    msg, code, param = error_details(resp)
    if resp.status_code == 429 and "quota" not in msg.lower():
        raise ProviderRetryable(provider, msg, 429, retry_after_seconds(resp), code=code, param=param)
    if resp.status_code >= 500 or resp.status_code in (408, 409):
        raise ProviderRetryable(provider, msg, resp.status_code, retry_after_seconds(resp), code=code, param=param)
    raise ProviderRejected(provider, msg, resp.status_code, code=code, param=param)


async def call(provider: str, send: Callable[[], Awaitable[T]], retry: RetryPolicy, *,
               metrics: WorkerMetrics | None = None) -> T:
    """Run ``send`` (one HTTP exchange that raises ProviderError), retried as ``retry`` says.

    Backoff is exponential with full jitter; a Retry-After the provider sends is honoured,
    unless it is longer than ``retry.retry_after_cap`` (then the task fails now rather than
    later). No retry starts after ``retry.budget`` seconds.
    """
    started = time.monotonic()
    attempt = 0
    while True:
        try:
            return await send()
        except ProviderRejected as e:
            if metrics:
                metrics.provider_error(provider, str(e.status or "rejected"))
            raise
        except (ProviderRetryable, httpx.TransportError) as e:
            err = e if isinstance(e, ProviderRetryable) else ProviderRetryable(
                provider, f"{type(e).__name__}: {e}".rstrip(": "))
            if metrics:
                metrics.provider_error(provider, str(err.status or type(e).__name__))
            if attempt >= retry.max_retries:
                raise err
            wait = random.uniform(0, min(MAX_BACKOFF_S, 0.25 * 2**attempt))
            if err.retry_after is not None:
                if err.retry_after > retry.retry_after_cap:
                    raise err
                wait = err.retry_after + random.uniform(0, 0.1)
            if retry.budget is not None and time.monotonic() - started + wait > retry.budget:
                raise err
            attempt += 1
            await asyncio.sleep(wait)


__all__ = ["ProviderError", "call", "classify", "error_details", "json_post", "make_client", "retry_after_seconds"]
