"""Fetching a URL a user gave us without letting them reach our own network (SSRF guard).

Used by moderation's ``imageUrl``, re-hosting downloads and the user's storage endpoints
(Bunny, S3), and meant for webhooks. The rule: http/https only; every
address a host resolves to must be public, checked again for every connection — so for every
redirect hop too — and the connection goes to the address that was checked, so DNS cannot
answer "public" to the check and "private" to the connect (rebinding). An operator can let
named internal hosts through with ``SYNCNODE_FETCH_ALLOW`` (``host:port`` entries).

The check sits in an httpcore network backend, the one place every connection is opened, so
no code path (redirect, retry, keep-alive) can skip it. aiohttp clients (re-hosting, aiobotocore)
get the same rules through a resolver that returns only vetted addresses (aiohttp connects to
exactly those), plus a per-request check of IP literals, which aiohttp never resolves.

It lives in ``storage/`` because the lowest of its users is there (the hosting backends in
``storage/files/``); the ingress and the workers sit above and import it from here.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import ssl
import typing
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from functools import lru_cache

import aiohttp
import certifi
import httpcore
import httpx
from aiohttp.abc import AbstractResolver, ResolveResult
from httpx_aiohttp import AiohttpTransport

from jobs.errors import BadRequest

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Resolver = Callable[[str, int], Awaitable[list[str]]]

_NAT64 = ipaddress.ip_network("64:ff9b::/96")


class FetchRefused(BadRequest):
    """A URL we will not fetch, or a fetch that failed; the message says why (a 400)."""


class NotPublic(FetchRefused):
    """The host is, or resolves to, a non-public address (what SYNCNODE_FETCH_ALLOW can let through)."""


async def system_resolve(host: str, port: int) -> list[str]:
    """Every address the OS resolver gives (it also reads odd literals: 127.1, 0x7f000001)."""
    loop = asyncio.get_running_loop()
    try:
        infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as e:
        raise FetchRefused(f"cannot resolve host {host!r}: {e.strerror}")
    except UnicodeError:
        # The idna codec refuses an empty or 64+ character label (".exe", "a..b"): no such host.
        raise FetchRefused(f"cannot resolve host {host!r}: not a valid host name")
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


def why_not_public(ip: IPAddress) -> str | None:
    """None for a public unicast address, else what it is (for the error message)."""
    if isinstance(ip, ipaddress.IPv6Address):
        # Addresses that embed an IPv4 address are judged by the address they lead to.
        embedded = ip.ipv4_mapped or ip.sixtofour or (ip.teredo[1] if ip.teredo else None)
        if embedded is None and ip in _NAT64:
            embedded = ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
        if embedded is not None:
            return why_not_public(embedded)
    for attr, what in (("is_loopback", "loopback"), ("is_link_local", "link-local"),
                       ("is_multicast", "multicast"), ("is_unspecified", "unspecified"),
                       ("is_reserved", "reserved"), ("is_private", "private")):
        if getattr(ip, attr):
            return what
    if isinstance(ip, ipaddress.IPv6Address) and ip.is_site_local:  # fec0::/10: 3.11 calls it global
        return "site-local"
    if not ip.is_global:  # e.g. 100.64.0.0/10 (carrier-grade NAT)
        return "non-public"
    return None


def _ends_in_number(label: str) -> bool:
    if label[:2].lower() == "0x":
        return all(c in "0123456789abcdefABCDEF" for c in label[2:])
    return label.isdigit()


def non_canonical_literal(host: str) -> bool:
    """Whether ``host`` is an IPv4 address written any way but dotted decimal: ``127.1``,
    ``2130706433``, ``017700000001``, ``0x7f.0.0.1``, ``127.0.0.1.``. Resolvers (inet_aton) and
    browsers read these as addresses, but ``ipaddress`` does not, so they would be judged as
    names by one layer and connected to as addresses by another. Refused outright: no one
    needs them, and a guard must never depend on which library gets to parse a host first."""
    h = host.strip("[]")
    if ":" in h:
        return False  # IPv6: one grammar, which ipaddress reads exactly as resolvers do
    labels = h.split(".")
    if not _ends_in_number(labels[-1] if labels[-1] or len(labels) == 1 else labels[-2]):
        return False  # a name (WHATWG's rule: only a host ending in a number is an IPv4 address)
    try:
        return str(ipaddress.IPv4Address(h)) != h
    except ValueError:
        return True


def _refuse_non_canonical(host: str) -> None:
    if non_canonical_literal(host):
        raise FetchRefused(f"{host!r} is an IP address in a non-canonical form; write it as a.b.c.d")


def _allowed(host: str, port: int, allow: frozenset[str]) -> bool:
    h = host.lower().strip("[]")
    return f"{h}:{port}" in allow or f"[{h}]:{port}" in allow


async def vetted_addresses(host: str, port: int, allow: frozenset[str],
                           resolver: Resolver | None = None) -> list[str] | None:
    """The addresses a connection to ``host:port`` may use, all checked; None when the operator
    allowed ``host:port`` (connect by name). Raises FetchRefused for anything non-public.

    The caller must connect to exactly these addresses: resolving again could give another
    answer (DNS rebinding)."""
    _refuse_non_canonical(host)
    if _allowed(host, port, allow):
        return None
    resolve = resolver or system_resolve
    addresses = await resolve(host, port)
    if not addresses:
        raise FetchRefused(f"cannot resolve host {host!r}")
    for a in addresses:
        # Every answer must be public: a mixed answer is how rebinding attacks start.
        why = why_not_public(ipaddress.ip_address(a.split("%")[0]))
        if why is not None:
            # The address itself stays out of the message: it would map the operator's network.
            raise NotPublic(f"{host!r} resolves to a {why} address; only public hosts can be reached")
    return addresses


class GuardedBackend(httpcore.AsyncNetworkBackend):
    """Resolves, refuses non-public addresses, then connects to the vetted address itself."""

    def __init__(self, allow: frozenset[str], resolver: Resolver | None = None,
                 inner: httpcore.AsyncNetworkBackend | None = None) -> None:
        self.allow = allow
        self.resolver = resolver
        self.inner = inner or httpcore.AnyIOBackend()

    async def connect_tcp(self, host: str, port: int, timeout: float | None = None,
                          local_address: str | None = None,
                          socket_options: Iterable[typing.Any] | None = None) -> httpcore.AsyncNetworkStream:
        addresses = await vetted_addresses(host, port, self.allow, self.resolver)
        if addresses is None:
            return await self.inner.connect_tcp(host, port, timeout, local_address, socket_options)
        last: Exception | None = None
        for a in addresses:
            try:
                return await self.inner.connect_tcp(a, port, timeout, local_address, socket_options)
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as e:
                last = e
        assert last is not None
        raise last

    async def connect_unix_socket(self, path: str, timeout: float | None = None,
                                  socket_options: Iterable[typing.Any] | None = None
                                  ) -> httpcore.AsyncNetworkStream:
        raise FetchRefused("unix sockets are never fetched")

    async def sleep(self, seconds: float) -> None:
        await self.inner.sleep(seconds)


@lru_cache(maxsize=1)
def _ssl_context() -> ssl.SSLContext:
    # Loading the CA bundle costs milliseconds: once per process, not per fetch.
    return ssl.create_default_context(cafile=certifi.where())


class GuardedTransport(httpx.AsyncHTTPTransport):
    def __init__(self, backend: GuardedBackend, max_connections: int = 4) -> None:
        # trust_env off: a proxy from the environment would connect for us, past the guard.
        super().__init__(trust_env=False, retries=0)
        # httpx has no parameter for the network backend; its pool is rebuilt with ours.
        self._pool = httpcore.AsyncConnectionPool(ssl_context=_ssl_context(), max_connections=max_connections,
                                                  keepalive_expiry=30, network_backend=backend)


def guarded_client(allow: frozenset[str], *, connect_timeout: float, read_timeout: float,
                   max_connections: int = 4, resolver: Resolver | None = None) -> httpx.AsyncClient:
    """A long-lived client whose every connection (redirect hops, keep-alive refills) is guarded.

    Redirects stay off unless a request asks for them; a refused address raises FetchRefused."""
    return httpx.AsyncClient(
        transport=GuardedTransport(GuardedBackend(allow, resolver), max_connections),
        timeout=httpx.Timeout(read_timeout, connect=connect_timeout, pool=connect_timeout),
        headers={"User-Agent": "SyncNode/0.1"}, trust_env=False)


@dataclass(frozen=True, slots=True)
class Fetched:
    body: bytes
    url: str
    content_type: str


@dataclass(frozen=True, slots=True)
class FetchPolicy:
    allow: frozenset[str] = frozenset()
    max_bytes: int = 10 << 20
    max_redirects: int = 3
    connect_timeout: float = 5.0
    total_timeout: float = 10.0


def _check_url(url: httpx.URL, what: str) -> None:
    if url.scheme not in ("http", "https"):
        raise FetchRefused(f"{what} must be an http or https URL")
    if not url.host:
        raise FetchRefused(f"{what} has no host")
    _refuse_non_canonical(url.host)
    if url.userinfo:
        raise FetchRefused(f"{what} must not carry a user name or password")


async def fetch(raw_url: str, policy: FetchPolicy, *, what: str = "URL", resolver: Resolver | None = None,
                inner: httpcore.AsyncNetworkBackend | None = None) -> Fetched:
    """GET a user-supplied URL within ``policy``; raises FetchRefused (a 400) saying why not."""
    try:
        url = httpx.URL(raw_url)
    except (httpx.InvalidURL, ValueError) as e:
        raise FetchRefused(f"{what} is not a valid URL: {e}")
    _check_url(url, what)
    backend = GuardedBackend(policy.allow, resolver, inner)
    timeout = httpx.Timeout(policy.total_timeout, connect=policy.connect_timeout)
    try:
        async with asyncio.timeout(policy.total_timeout), httpx.AsyncClient(
                transport=GuardedTransport(backend), timeout=timeout, follow_redirects=False,
                headers={"User-Agent": "SyncNode/0.1 (+moderation fetch)", "Accept": "image/*",
                         "Accept-Encoding": "identity"}) as client:
            return await _follow(client, url, policy, what)
    except TimeoutError:
        raise FetchRefused(f"{what} did not answer within {policy.total_timeout:g} s")
    except httpx.HTTPError as e:
        raise FetchRefused(f"{what} could not be fetched: {type(e).__name__}: {e}".rstrip(": "))


async def _follow(client: httpx.AsyncClient, url: httpx.URL, policy: FetchPolicy, what: str) -> Fetched:
    for _ in range(policy.max_redirects + 1):
        async with client.stream("GET", url) as resp:
            if resp.is_redirect:
                location = resp.headers.get("location", "")
                url = url.join(location)
                _check_url(url, f"{what} redirect")
                continue
            if resp.status_code != 200:
                raise FetchRefused(f"{what} answered HTTP {resp.status_code}")
            declared = resp.headers.get("content-length", "")
            if declared.isdigit() and int(declared) > policy.max_bytes:
                raise FetchRefused(f"{what} is larger than {policy.max_bytes} bytes")
            chunks: list[bytes] = []
            size = 0
            async for chunk in resp.aiter_bytes():  # decoded: the cap also stops gzip bombs
                size += len(chunk)
                if size > policy.max_bytes:
                    raise FetchRefused(f"{what} is larger than {policy.max_bytes} bytes")
                chunks.append(chunk)
            return Fetched(b"".join(chunks), str(url), resp.headers.get("content-type", ""))
    raise FetchRefused(f"{what} redirected more than {policy.max_redirects} times")


class GuardedResolver(AbstractResolver):
    """The same guard for aiohttp clients (aiobotocore's S3): aiohttp connects to exactly the
    addresses its resolver returns, so returning only vetted ones pins the connection.

    aiohttp skips the resolver for IP literals; :func:`check_literal` covers those."""

    def __init__(self, allow: frozenset[str], resolver: Resolver | None = None) -> None:
        self.allow = allow
        self.resolver = resolver

    async def resolve(self, host: str, port: int = 0,
                      family: socket.AddressFamily = socket.AF_INET) -> list[ResolveResult]:
        addresses = await vetted_addresses(host, port, self.allow, self.resolver)
        if addresses is None:  # allowed by the operator: the system's answer, as is
            addresses = await system_resolve(host, port)
        out: list[ResolveResult] = []
        for a in addresses:
            ip = ipaddress.ip_address(a.split("%")[0])
            fam = socket.AF_INET6 if ip.version == 6 else socket.AF_INET
            out.append({"hostname": host, "host": str(ip), "port": port, "family": fam, "proto": 0,
                        "flags": socket.AI_NUMERICHOST})
        return out

    async def close(self) -> None:
        return None


class LiteralGuard(httpx.AsyncBaseTransport):
    """Completes GuardedResolver for an httpx client on aiohttp: aiohttp never asks its resolver
    about an IP literal, so literals are checked here, on every request (every redirect hop:
    httpx follows redirects above the transport)."""

    def __init__(self, inner: httpx.AsyncBaseTransport, allow: frozenset[str]) -> None:
        self.inner = inner
        self.allow = allow

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        url = request.url
        _check_url(url, "URL")
        check_literal(url.host, url.port or (443 if url.scheme == "https" else 80), self.allow)
        return await self.inner.handle_async_request(request)

    async def aclose(self) -> None:
        await self.inner.aclose()


def guarded_aiohttp_client(allow: frozenset[str], *, connect_timeout: float, read_timeout: float,
                           max_connections: int, resolver: Resolver | None = None) -> httpx.AsyncClient:
    """:func:`guarded_client` on aiohttp, for hot paths (re-hosting downloads): the same rules and
    pinning, at a fraction of httpcore's CPU per request (docs/benchmarks.md). Names go through
    :class:`GuardedResolver`, IP literals through :class:`LiteralGuard`."""
    def session() -> aiohttp.ClientSession:
        connector = aiohttp.TCPConnector(resolver=GuardedResolver(allow, resolver), limit=max_connections,
                                         keepalive_timeout=30, ssl=_ssl_context())
        # trust_env off: a proxy from the environment would connect for us, past the guard.
        return aiohttp.ClientSession(connector=connector, trust_env=False)

    return httpx.AsyncClient(
        transport=LiteralGuard(AiohttpTransport(client=session), allow),
        timeout=httpx.Timeout(read_timeout, connect=connect_timeout, pool=connect_timeout),
        headers={"User-Agent": "SyncNode/0.1"}, trust_env=False)


def check_literal(host: str, port: int, allow: frozenset[str]) -> None:
    """Refuse a non-public IP literal (no DNS involved, so a check now holds for every connect)."""
    _refuse_non_canonical(host)
    try:
        ip = ipaddress.ip_address(host.strip("[]").split("%")[0])
    except ValueError:
        return  # a name: checked when it is resolved
    why = why_not_public(ip)
    if why is not None and not _allowed(host, port, allow):
        raise NotPublic(f"{host!r} is a {why} address; only public hosts can be reached")
