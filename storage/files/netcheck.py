"""Refuse user-supplied endpoints that point into the gateway's own network (SSRF).

Loopback, private, link-local and other non-global addresses are refused unless their
``host:port`` is listed in ``SYNCNODE_FETCH_ALLOW`` (CONTRACT §2).
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from urllib.parse import urlsplit

from storage.files import StorageError


def host_port(url: str) -> tuple[str, int]:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise StorageError(f"Invalid URL {url!r}: must be http(s)://host[:port]/…")
    return parts.hostname.lower(), parts.port or (443 if parts.scheme == "https" else 80)


async def check_reachable(url: str, allow: frozenset[str]) -> None:
    """Raise StorageError if ``url`` resolves to a non-public address not in the allow list."""
    host, port = host_port(url)
    if f"{host}:{port}" in allow:
        return
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError:
        raise StorageError(f"Cannot resolve host {host!r}")
    for info in infos:
        addr = ipaddress.ip_address(info[4][0])
        if not addr.is_global:
            raise StorageError(f"Host {host!r} resolves to a private address ({addr}); "
                               "the operator can allow it with SYNCNODE_FETCH_ALLOW")


def is_public_url(url: str) -> bool:
    """Whether Replicate could deliver a webhook to this base URL (no DNS: names are trusted)."""
    try:
        host, _ = host_port(url)
    except StorageError:
        return False
    if host == "localhost" or host.endswith((".localhost", ".local", ".internal", ".lan")):
        return False
    try:
        return ipaddress.ip_address(host).is_global
    except ValueError:
        return "." in host
