"""An S3 (or S3-compatible: R2, MinIO, Wasabi…) bucket through aiobotocore.

The endpoint is the user's to choose, so every connection goes through
``storage.egress.GuardedResolver`` (aiohttp connects to exactly the addresses it vetted: no second
DNS answer) and an IP-literal endpoint, which aiohttp never resolves, is checked up front.
Environment proxies are off: a proxy would connect for us, past the guard.

Building a client from a fresh botocore session costs 100-200 ms of synchronous work (loading
the service model); from the process's one session it is ~7 ms. On top, one client per
configuration is kept for the process (per event loop) and reused.
"""

from __future__ import annotations

import asyncio
import weakref
from collections import OrderedDict
from pathlib import Path
from typing import Any

from aiobotocore.config import AioConfig
from aiobotocore.session import get_session
from botocore.exceptions import BotoCoreError, ClientError

from storage.egress import FetchRefused, GuardedResolver, check_literal
from storage.files import StorageError
from storage.files.netcheck import host_port
from storage.files.sniff import stored_as

_MAX_CLIENTS = 32
# Per event loop: an aiobotocore client's connections belong to the loop that opened them.
_clients: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, OrderedDict[tuple[Any, ...], Any]] = \
    weakref.WeakKeyDictionary()
_background: set[asyncio.Task[None]] = set()


_SESSION: Any = None


def _session() -> Any:
    """One botocore session per process: it caches the service models it loads, so a client
    costs ~7 ms to build instead of 100-200 ms of synchronous work on the event loop (measured)."""
    global _SESSION
    if _SESSION is None:
        _SESSION = get_session()
    return _SESSION


def _refused(e: BaseException) -> FetchRefused | None:
    """The guard's refusal inside botocore's wrapping (HTTPClientError(error=...)), if that is it."""
    seen: BaseException | None = e
    for _ in range(5):
        if seen is None:
            return None
        if isinstance(seen, FetchRefused):
            return seen
        inner = getattr(seen, "kwargs", {}).get("error") if isinstance(seen, BotoCoreError) else None
        seen = inner if isinstance(inner, BaseException) else seen.__cause__ or seen.__context__
    return None


async def _close_later(client: Any, after_s: float) -> None:
    await asyncio.sleep(after_s)  # an upload that still holds it gets its timeout to finish
    await client.__aexit__(None, None, None)


class S3Store:
    def __init__(self, *, bucket: str, region: str, endpoint_url: str | None, access_key_id: str,
                 secret_access_key: str, public_base_url: str | None, timeout: float = 120.0,
                 allow: frozenset[str] = frozenset(), shared: bool = True) -> None:
        self.bucket = bucket
        self.region = region
        self.endpoint_url = endpoint_url or None
        self.creds = (access_key_id, secret_access_key)
        self.timeout = timeout
        self.allow = allow
        # shared: the process-wide client for this configuration; else one of its own, for a
        # one-off use (the save-time check) that close() ends.
        self.shared = shared
        self._own: Any = None
        if public_base_url:
            self.public = public_base_url.rstrip("/")
        elif self.endpoint_url:
            self.public = f"{self.endpoint_url.rstrip('/')}/{bucket}"
        else:
            self.public = f"https://{bucket}.s3.{region}.amazonaws.com"

    async def _client(self) -> Any:
        if self.endpoint_url:
            try:
                check_literal(*host_port(self.endpoint_url), self.allow)
            except FetchRefused as e:
                raise StorageError(f"S3 endpoint refused: {e}")
        if not self.shared:
            if self._own is None:
                self._own = await self._new_client()
            return self._own
        key = (self.region, self.endpoint_url, self.creds, self.timeout, self.allow)
        cache = _clients.setdefault(asyncio.get_running_loop(), OrderedDict())
        client = cache.get(key)
        if client is not None:
            cache.move_to_end(key)
            return client
        client = await self._new_client()
        if (other := cache.get(key)) is not None:  # another upload built one meanwhile: use that
            await client.__aexit__(None, None, None)
            return other
        cache[key] = client
        while len(cache) > _MAX_CLIENTS:
            _, old = cache.popitem(last=False)
            t = asyncio.get_running_loop().create_task(_close_later(old, self.timeout + 10))
            _background.add(t)
            t.add_done_callback(_background.discard)
        return client

    async def _new_client(self) -> Any:
        config = AioConfig(connect_timeout=10, read_timeout=self.timeout, retries={"max_attempts": 2},
                           signature_version="s3v4", proxies={},
                           connector_args={"resolver": GuardedResolver(self.allow)})
        return await _session().create_client(
            "s3", region_name=self.region, endpoint_url=self.endpoint_url,
            aws_access_key_id=self.creds[0], aws_secret_access_key=self.creds[1], config=config).__aenter__()

    async def close(self) -> None:
        """End a non-shared store's client (shared ones live until :func:`close_all`)."""
        if self._own is not None:
            own, self._own = self._own, None
            await own.__aexit__(None, None, None)

    def _error(self, what: str, e: Exception) -> StorageError:
        if (refused := _refused(e)) is not None:
            return StorageError(f"S3 endpoint refused: {refused}")
        if isinstance(e, ClientError):
            err = e.response.get("Error", {})
            return StorageError(f"S3 refused the {what}: {err.get('Code')}: {err.get('Message')}")
        return StorageError(f"S3 unreachable: {e}")

    async def put(self, key: str, path: Path, size: int, content_type: str) -> str:
        body = await asyncio.to_thread(path.open, "rb")
        try:
            s3 = await self._client()
            ctype, disposition = stored_as(content_type)
            extra = {"ContentDisposition": disposition} if disposition else {}
            await s3.put_object(Bucket=self.bucket, Key=key, Body=body, ContentLength=size,
                                ContentType=ctype, **extra)
        except (ClientError, BotoCoreError, OSError, ValueError, FetchRefused) as e:
            raise self._error("upload", e)
        finally:
            body.close()
        return f"{self.public}/{key}"

    async def delete(self, key: str) -> None:
        try:
            s3 = await self._client()
            await s3.delete_object(Bucket=self.bucket, Key=key)
        except (ClientError, BotoCoreError, OSError, ValueError, FetchRefused) as e:
            raise self._error("delete", e)


async def close_all() -> None:
    """Close this event loop's shared clients (worker shutdown)."""
    cache = _clients.pop(asyncio.get_running_loop(), None) or OrderedDict()
    for client in cache.values():
        await client.__aexit__(None, None, None)
