"""Re-hosting: every file URL in a prediction's output is copied to the account's storage.

Provider URLs expire after an hour and need the provider key, so this runs as soon as the
prediction succeeds. The output keeps its shape (a string, a list, URLs nested in objects)
with our URLs in place of theirs. Files are streamed to a temporary file under a size cap,
typed from their bytes, and named ``<job_id>/<n>.<ext>``: unique per task, and the same on a
retry, so a retried upload overwrites rather than duplicates.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import logging
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx

from jobs.settings import Settings
from storage.files import FileStore, StorageError
from storage.files import config as files_config
from storage.files.netcheck import check_reachable
from storage.files.sniff import sniff
from storage.storage_configs import StorageConfigRepository
from workers.context import WorkerContext
from workers.providers.http import make_client

log = logging.getLogger("syncnode.hosting")

_HOSTING_CLIENT = "Hosting"


class HostingError(Exception):
    pass


def file_urls(output: Any) -> list[str]:
    """Every URL-looking string in the output, in document order, without repeats."""
    seen: dict[str, None] = {}

    def walk(v: Any) -> None:
        if isinstance(v, str):
            if v.startswith(("https://", "http://", "data:")) and " " not in v:
                seen.setdefault(v)
        elif isinstance(v, list):
            for x in v:
                walk(x)
        elif isinstance(v, dict):
            for x in v.values():
                walk(x)

    walk(output)
    return list(seen)


def replace_urls(output: Any, mapping: dict[str, str]) -> Any:
    if isinstance(output, str):
        return mapping.get(output, output)
    if isinstance(output, list):
        return [replace_urls(x, mapping) for x in output]
    if isinstance(output, dict):
        return {k: replace_urls(v, mapping) for k, v in output.items()}
    return output


def provider_hosts(s: Settings) -> Callable[[str], bool]:
    """Hosts the provider key may be sent to: Replicate's own, and the configured API host."""
    api = (urlsplit(s.replicate_base_url).hostname or "").lower()

    def trusted(host: str) -> bool:
        return host == api or host in ("replicate.delivery", "replicate.com", "api.replicate.com") \
            or host.endswith(".replicate.delivery")

    return trusted


def hosting_client(w: WorkerContext) -> httpx.AsyncClient:
    # One client per worker for downloads and Bunny uploads; closed with the others at shutdown.
    c = w.http.get(_HOSTING_CLIENT)
    if c is None:
        s = w.settings
        c = w.http[_HOSTING_CLIENT] = make_client(
            "", connect_timeout=s.provider_connect_timeout, read_timeout=s.hosting_timeout_seconds,
            max_connections=s.poll_concurrency)
    return c


async def store_for(w: WorkerContext, uid: str) -> FileStore:
    s = w.settings
    row = await StorageConfigRepository(w.db).get(uid)
    if row is None or row["provider"] == "default":
        provider, settings, secret = files_config.operator_default(
            s.default_storage.get_secret_value() if s.default_storage else None)
    else:
        provider, settings = row["provider"], dict(row["settings"])
        secret = files_config.unseal(w.box, row["ciphertext"])
        for url in files_config.endpoints(provider, settings):
            await check_reachable(url, s.fetch_allow_list)
    return files_config.build(provider, settings, secret, http=hosting_client(w),
                              local_root=s.data_dir / "files", public_url=s.public_url,
                              timeout=s.hosting_timeout_seconds)


async def _download(w: WorkerContext, url: str, key: str, dest: Path) -> tuple[int, bytes]:
    """Stream ``url`` into ``dest`` under the size cap; returns (size, first bytes)."""
    cap = w.settings.hosting_max_bytes
    if url.startswith("data:"):
        try:
            data = base64.b64decode(url.split(",", 1)[1], validate=True)
        except (IndexError, binascii.Error):
            raise HostingError("an output data: URL is not valid base64")
        if len(data) > cap:
            raise HostingError(f"an output file is larger than {cap} bytes")
        dest.write_bytes(data)
        return len(data), data[:64]
    host = (urlsplit(url).hostname or "").lower()
    headers: dict[str, str] = {}
    if provider_hosts(w.settings)(host):
        headers["Authorization"] = f"Bearer {key}"
    else:
        try:  # a model can output any URL: never fetch our own network for it
            await check_reachable(url, w.settings.fetch_allow_list)
        except StorageError as e:
            raise HostingError(str(e))
    size, head = 0, b""
    # Redirects only on the provider's own hosts: elsewhere one could bounce us into our network.
    async with hosting_client(w).stream("GET", url, headers=headers, follow_redirects=bool(headers)) as r:
        if r.status_code >= 300:
            raise HostingError(f"downloading {url} failed: HTTP {r.status_code}")
        declared = r.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > cap:
            raise HostingError(f"an output file is larger than {cap} bytes")
        with dest.open("wb") as f:
            async for chunk in r.aiter_bytes():
                size += len(chunk)
                if size > cap:
                    raise HostingError(f"an output file is larger than {cap} bytes")
                if len(head) < 64:
                    head += chunk[: 64 - len(head)]
                f.write(chunk)
    return size, head


async def _copy_all(w: WorkerContext, store: FileStore, job_id: str, urls: list[str],
                    key: str) -> dict[str, str]:
    mapping: dict[str, str] = {}
    with tempfile.TemporaryDirectory(prefix="syncnode-host-") as tmp:
        for i, url in enumerate(urls):
            path = Path(tmp) / str(i)
            size, head = await _download(w, url, key, path)
            ctype, ext = sniff(head)
            mapping[url] = await store.put(f"{job_id}/{i}.{ext}", path, size, ctype)
    return mapping


async def rehost(w: WorkerContext, uid: str, job_id: str, output: Any, key: str) -> tuple[Any, str | None]:
    """(output with our URLs, None) or, when hosting keeps failing, (provider output, why)."""
    urls = file_urls(output)
    if not urls:
        return output, None
    error = "unknown error"
    for attempt in range(max(1, w.settings.hosting_attempts)):
        if attempt:
            await asyncio.sleep(min(10.0, 1.0 * 2 ** (attempt - 1)))
        try:
            store = await store_for(w, uid)
            return replace_urls(output, await _copy_all(w, store, job_id, urls, key)), None
        except (HostingError, StorageError) as e:
            error = str(e)
        except (httpx.HTTPError, OSError) as e:
            error = f"{type(e).__name__}: {e}".rstrip(": ")
        log.warning("re-hosting %s failed (attempt %d): %s", job_id, attempt + 1, error)
    return output, (f"Outputs could not be copied to your storage ({error}); "
                    "these provider URLs expire in an hour")
