"""Bunny Storage through its HTTP API: ``PUT https://{region host}/{zone}/{path}`` with the zone's
password in the ``AccessKey`` header; files are public under the pull zone's URL."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import quote

import httpx

from storage.files import StorageError

_CHUNK = 1 << 20


async def _chunks(path: Path) -> AsyncIterator[bytes]:
    with path.open("rb") as f:
        while chunk := f.read(_CHUNK):
            yield chunk


class BunnyStore:
    def __init__(self, client: httpx.AsyncClient, *, storage_zone: str, access_key: str, region_host: str,
                 pull_zone_url: str, timeout: float = 120.0) -> None:
        self.client = client
        base = region_host if "://" in region_host else f"https://{region_host}"
        self.base = f"{base.rstrip('/')}/{quote(storage_zone)}"
        self.access_key = access_key
        self.public = pull_zone_url.rstrip("/")
        self.timeout = timeout

    async def put(self, key: str, path: Path, size: int, content_type: str) -> str:
        try:
            r = await self.client.put(
                f"{self.base}/{quote(key)}", content=_chunks(path), timeout=self.timeout,
                headers={"AccessKey": self.access_key, "Content-Type": content_type,
                         "Content-Length": str(size)})
        except httpx.HTTPError as e:
            raise StorageError(f"Bunny storage unreachable: {type(e).__name__}: {e}")
        if r.status_code == 401:
            raise StorageError("Bunny storage rejected the access key (401): use the storage zone password")
        if r.status_code >= 300:
            raise StorageError(f"Bunny storage answered {r.status_code}: {r.text[:200]}")
        return f"{self.public}/{key}"

    async def delete(self, key: str) -> None:
        try:
            await self.client.delete(f"{self.base}/{quote(key)}", headers={"AccessKey": self.access_key},
                                     timeout=self.timeout)
        except httpx.HTTPError as e:
            raise StorageError(f"Bunny storage unreachable: {e}")
