"""Bunny Storage through its HTTP API: ``PUT https://{region host}/{zone}/{path}`` with the zone's
password in the ``AccessKey`` header; files are public under the pull zone's URL.

The region host is the user's to choose, so the client handed in must be a guarded one
(``storage.egress.guarded_client``), and nothing the remote answers is echoed back: only its
status code, so the endpoint cannot be used to read another server's responses.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import quote

import httpx

from storage.egress import FetchRefused
from storage.files import StorageError
from storage.files.sniff import stored_as

_CHUNK = 1 << 20


async def _chunks(path: Path) -> AsyncIterator[bytes]:
    # Reads in a thread: a 1 MiB read from a slow disk would stall every job on the loop.
    f = await asyncio.to_thread(path.open, "rb")
    try:
        while chunk := await asyncio.to_thread(f.read, _CHUNK):
            yield chunk
    finally:
        f.close()


class BunnyStore:
    def __init__(self, client: httpx.AsyncClient, *, storage_zone: str, access_key: str, region_host: str,
                 pull_zone_url: str, timeout: float = 120.0) -> None:
        self.client = client
        base = region_host if "://" in region_host else f"https://{region_host}"
        self.base = f"{base.rstrip('/')}/{quote(storage_zone)}"
        self.access_key = access_key
        self.public = pull_zone_url.rstrip("/")
        self.timeout = timeout

    async def _send(self, method: str, key: str, headers: dict[str, str],
                    content: AsyncIterator[bytes] | None = None) -> httpx.Response:
        try:
            return await self.client.request(method, f"{self.base}/{quote(key)}", headers=headers,
                                             content=content, timeout=self.timeout)
        except FetchRefused as e:
            raise StorageError(f"Bunny storage host refused: {e}")
        except (httpx.InvalidURL, ValueError) as e:
            raise StorageError(f"Bunny region host is not a valid URL: {e}")
        except httpx.HTTPError as e:  # transport errors: our side's words, not the remote's
            raise StorageError(f"Bunny storage unreachable: {type(e).__name__}: {e}".rstrip(": "))

    async def put(self, key: str, path: Path, size: int, content_type: str) -> str:
        # Bunny's CDN types a file by its name (hosting names active content .bin); the upload's
        # type is octet-stream for anything not passive all the same.
        ctype, _ = stored_as(content_type)
        r = await self._send("PUT", key, {"AccessKey": self.access_key, "Content-Type": ctype,
                                          "Content-Length": str(size)}, _chunks(path))
        if r.status_code == 401:
            raise StorageError("Bunny storage rejected the access key (401): use the storage zone password")
        if r.status_code >= 300:
            raise StorageError(f"Bunny storage answered HTTP {r.status_code}")
        return f"{self.public}/{key}"

    async def delete(self, key: str) -> None:
        r = await self._send("DELETE", key, {"AccessKey": self.access_key})
        if r.status_code >= 300 and r.status_code != 404:
            raise StorageError(f"Bunny storage answered HTTP {r.status_code} to a delete")
