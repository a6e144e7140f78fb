"""Refuse user-supplied storage endpoints that point into the gateway's own network (SSRF).

The rules are ``storage.egress``'s (public unicast only, IPv4 embedded in IPv6 judged by the
IPv4 address, ``SYNCNODE_FETCH_ALLOW`` entries let named ``host:port`` through). This check
runs before a save or an upload so the user gets a clear message early; it is not what keeps
them out: every connection is guarded again at connect time, pinned to the address that was
checked (``storage.egress.GuardedBackend`` / ``GuardedResolver``), since DNS may answer
differently the second time.
"""

from __future__ import annotations

import ipaddress
from urllib.parse import urlsplit

from storage import egress
from storage.files import StorageError


def host_port(url: str) -> tuple[str, int]:
    """(host, port) of an http(s) URL; StorageError (a clear message) for anything malformed."""
    try:
        parts = urlsplit(url)
        port = parts.port  # raises ValueError for a port out of range or not a number
    except ValueError as e:
        raise StorageError(f"Invalid URL {url!r}: {e}")
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise StorageError(f"Invalid URL {url!r}: must be http(s)://host[:port]/…")
    if parts.username is not None or parts.password is not None:
        raise StorageError(f"Invalid URL {url!r}: must not carry a user name or password")
    return parts.hostname.lower(), port or (443 if parts.scheme == "https" else 80)


async def check_reachable(url: str, allow: frozenset[str], resolver: egress.Resolver | None = None) -> None:
    """Raise StorageError if ``url`` is malformed or leads to a non-public address not allowed."""
    host, port = host_port(url)
    try:
        egress.check_literal(host, port, allow)
        await egress.vetted_addresses(host, port, allow, resolver)
    except egress.NotPublic as e:
        raise StorageError(f"{e}. A private address is refused unless the operator allows it "
                           "with SYNCNODE_FETCH_ALLOW")
    except egress.FetchRefused as e:  # a name that does not resolve, a non-canonical literal: no allow-list helps
        raise StorageError(str(e))


def is_public_url(url: str) -> bool:
    """Whether Replicate could deliver a webhook to this base URL (no DNS: names are trusted)."""
    try:
        host, _ = host_port(url)
    except StorageError:
        return False
    if host == "localhost" or host.endswith((".localhost", ".local", ".internal", ".lan")):
        return False
    try:
        return egress.why_not_public(ipaddress.ip_address(host)) is None
    except ValueError:
        return "." in host
