"""Re-hosting: every provider file URL in a prediction's output is copied to the account's storage.

Provider URLs expire after an hour and need the provider key, so this runs as soon as the
prediction succeeds. The output keeps its shape (a string, a list, URLs nested in objects)
with our URLs in place of theirs. Only the provider's own file URLs (and ``data:`` URLs) are
copied: a model's output may be text that mentions any URL, and fetching those would let a
prompt steer the gateway at arbitrary hosts. Files are streamed to a temporary file under a
size cap, typed from their bytes, and named ``<job_id>/<n>.<ext>``: unique per task, and the
same on a retry, so a retried upload overwrites rather than duplicates.

Caps bound what one output can cost: ``SYNCNODE_HOSTING_MAX_FILES`` files and
``SYNCNODE_HOSTING_MAX_TOTAL_BYTES`` in all; past either, nothing more is downloaded and
:class:`OutputRefused` fails the task (refunded: the gateway cannot deliver what it sells).
Each temporary file is deleted as soon as it is uploaded. Files are stored with a passive type
or as attachments (``storage.files.sniff.hosted_type``). The user's key goes only to the
configured Replicate API origin (``https://api.replicate.com`` unless the operator says
otherwise), never to the public CDN and never over plain http elsewhere.

Every connection is guarded (``storage.egress``: public addresses only, pinned to the address
checked); the configured Replicate host is trusted as operator configuration. The whole copy
has a deadline below the poll job's timeout, so a slow download ends as a ``hosting_error``
with the provider's URLs rather than as a killed job.
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
from storage.egress import FetchRefused, guarded_aiohttp_client
from storage.files import FileStore, StorageError
from storage.files import config as files_config
from storage.files.netcheck import check_reachable, host_port
from storage.files.sniff import hosted_type
from storage.storage_configs import StorageConfigRepository
from workers.context import WorkerContext
from workers.output import OutputRefused

log = logging.getLogger("syncnode.hosting")

_DOWNLOAD_CLIENT = "HostingDownload"
_STORAGE_CLIENT = "HostingStorage"
_WRITE_BUFFER = 1 << 20


class HostingError(Exception):
    pass


def rehost_budget_seconds(s: Settings) -> float:
    """How long one re-hosting may take in all (the poll job's timeout is this plus a margin)."""
    return s.hosting_timeout_seconds * max(1, s.hosting_attempts)


def _replicate_api(s: Settings) -> tuple[str, int]:
    u = urlsplit(s.replicate_base_url)
    return (u.hostname or "").lower(), u.port or (443 if u.scheme == "https" else 80)


def provider_hosts(s: Settings) -> Callable[[str, str], bool]:
    """Whether (host, path) is one of the provider's files (re-hosted, sent the provider key):
    anything on Replicate's file hosts, and on the API host only its ``files/`` paths (the
    simulator serves its files there). Any other API URL a model prints — an account or
    billing endpoint — must never be fetched with the user's key and copied to their storage."""
    api, _ = _replicate_api(s)
    files_prefix = urlsplit(s.replicate_base_url).path.rstrip("/") + "/files/"

    def trusted(host: str, path: str) -> bool:
        if host == "replicate.delivery" or host.endswith(".replicate.delivery"):
            return True
        return host == api and path.startswith((files_prefix, "/files/"))

    return trusted


def key_origin(s: Settings) -> Callable[[str], bool]:
    """Whether a file URL is on the configured Replicate API origin (same scheme, host and port),
    the only place that needs the user's key: replicate.delivery is a public CDN, and a key sent
    over http to a host resolved through DNS can be read on the way."""
    host, port = _replicate_api(s)
    scheme = urlsplit(s.replicate_base_url).scheme

    def ours(url: str) -> bool:
        try:
            u = urlsplit(url)
            return (u.scheme == scheme and (u.hostname or "").lower() == host
                    and (u.port or (443 if u.scheme == "https" else 80)) == port)
        except ValueError:
            return False

    return ours


def _is_file_url(v: str, trusted: Callable[[str, str], bool]) -> bool:
    if v.startswith("data:"):
        # Only base64 data URLs are files; "data:" at the start of a text token is text.
        head, sep, _ = v.partition(",")
        return bool(sep) and head.endswith(";base64") and not any(c.isspace() for c in head)
    if not v.startswith(("https://", "http://")) or any(c.isspace() for c in v):
        return False
    try:
        parts = urlsplit(v)
        host = parts.hostname
    except ValueError:  # not a URL we could fetch; left as the model wrote it
        return False
    return host is not None and trusted(host.lower(), parts.path)


def file_urls(output: Any, trusted: Callable[[str, str], bool]) -> list[str]:
    """Every provider file URL (and data: URL) in the output, in document order, without repeats."""
    seen: dict[str, None] = {}

    def walk(v: Any) -> None:
        if isinstance(v, str):
            if _is_file_url(v, trusted):
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


def _client(w: WorkerContext, name: str, allow: frozenset[str]) -> httpx.AsyncClient:
    # One of each per worker, sized to the poll pool; closed with the others at shutdown. Keyed by
    # its allow list too: a client must never outlive the list it was built to enforce.
    key = f"{name}|{','.join(sorted(allow))}"
    c = w.http.get(key)
    if c is None:
        s = w.settings
        c = w.http[key] = guarded_aiohttp_client(allow, connect_timeout=s.provider_connect_timeout,
                                                  read_timeout=s.hosting_timeout_seconds,
                                                  max_connections=s.poll_concurrency)
    return c


def download_client(w: WorkerContext) -> httpx.AsyncClient:
    """Downloads: the operator's Replicate host is trusted (it may be on loopback, as in tests)."""
    host, port = _replicate_api(w.settings)
    return _client(w, _DOWNLOAD_CLIENT, w.settings.fetch_allow_list | {f"{host}:{port}"})


def storage_client(w: WorkerContext, allow: frozenset[str]) -> httpx.AsyncClient:
    """Uploads to Bunny: a user's zone trusts only SYNCNODE_FETCH_ALLOW; the operator's default
    storage (SYNCNODE_DEFAULT_STORAGE, operator configuration) also trusts its own host."""
    return _client(w, _STORAGE_CLIENT, allow)


def _hosts_of(urls: list[str]) -> frozenset[str]:
    out = set()
    for url in urls:
        try:
            host, port = host_port(url)
        except StorageError:
            continue  # the connection attempt will say what is wrong with it
        out.add(f"{host}:{port}")
    return frozenset(out)


async def store_for(w: WorkerContext, uid: str) -> FileStore:
    s = w.settings
    allow = s.fetch_allow_list
    row = await StorageConfigRepository(w.db).get(uid)
    if row is None or row["provider"] == "default":
        provider, settings, secret = files_config.operator_default(
            s.default_storage.get_secret_value() if s.default_storage else None)
        # The operator's own storage may well be internal (a MinIO next to the gateway).
        allow = allow | _hosts_of(files_config.endpoints(provider, settings))
    else:
        provider, settings = row["provider"], dict(row["settings"])
        secret = files_config.unseal(w.box, row["ciphertext"])
        for url in files_config.endpoints(provider, settings):
            await check_reachable(url, allow)  # a clear early refusal
    return files_config.build(provider, settings, secret, http=storage_client(w, allow),
                              local_root=s.data_dir / "files", public_url=s.public_url,
                              timeout=s.hosting_timeout_seconds, allow=allow)


def _decode_data_url(url: str, cap: int) -> bytes:
    try:
        data = base64.b64decode(url.split(",", 1)[1], validate=True)
    except (IndexError, binascii.Error, ValueError):
        raise HostingError("an output data: URL is not valid base64")
    if len(data) > cap:
        raise HostingError(f"an output file is larger than {cap} bytes")
    return data


def _over_total(s: Settings) -> OutputRefused:
    return OutputRefused(f"The model's output files total more than {s.hosting_max_total_bytes} bytes "
                         "(SYNCNODE_HOSTING_MAX_TOTAL_BYTES); nothing more was copied and the task was refunded")


def _check_size(s: Settings, size: int, room: int) -> None:
    if size > s.hosting_max_bytes:
        raise HostingError(f"an output file is larger than {s.hosting_max_bytes} bytes")
    if size > room:
        raise _over_total(s)


async def _download(w: WorkerContext, url: str, key: str, dest: Path, room: int) -> tuple[int, bytes]:
    """Stream ``url`` into ``dest`` under the size caps (``room``: what is left of the output's
    total); returns (size, first bytes)."""
    s = w.settings
    if url.startswith("data:"):
        data = _decode_data_url(url, s.hosting_max_bytes)
        _check_size(s, len(data), room)
        await asyncio.to_thread(dest.write_bytes, data)
        return len(data), data[:64]
    # Only provider URLs get here (file_urls). Redirects: each hop guarded, and httpx drops the
    # key when a redirect leaves the origin.
    headers = {"Authorization": f"Bearer {key}"} if key_origin(s)(url) else {}
    size, head = 0, b""
    async with download_client(w).stream("GET", url, headers=headers, follow_redirects=True) as r:
        if r.status_code >= 300:
            raise HostingError(f"downloading an output file failed: HTTP {r.status_code}")
        declared = r.headers.get("content-length")
        if declared and declared.isdigit():
            _check_size(s, int(declared), room)
        f = await asyncio.to_thread(dest.open, "wb")
        try:
            buf = bytearray()
            async for chunk in r.aiter_bytes():
                size += len(chunk)
                _check_size(s, size, room)
                if len(head) < 64:
                    head += chunk[: 64 - len(head)]
                buf += chunk
                if len(buf) >= _WRITE_BUFFER:  # disk writes off the loop, a megabyte at a time
                    await asyncio.to_thread(f.write, bytes(buf))
                    buf.clear()
            if buf:
                await asyncio.to_thread(f.write, bytes(buf))
        finally:
            f.close()
    return size, head


async def _copy_one(w: WorkerContext, store: FileStore, name: str, url: str, key: str, path: Path,
                    room: int) -> tuple[str, str, int]:
    """Copy one file: (our URL, its key in the store, size). Every failure becomes a
    HostingError (a malformed URL included), except a cap reached (OutputRefused)."""
    limit = w.settings.hosting_timeout_seconds
    try:
        async with asyncio.timeout(limit):  # a total per file: a trickling server cannot hold us
            try:
                size, head = await _download(w, url, key, path, room)
                ctype, ext = hosted_type(head)
                return await store.put(f"{name}.{ext}", path, size, ctype), f"{name}.{ext}", size
            finally:  # at most one output file on disk at a time
                await asyncio.to_thread(path.unlink, True)
    except (HostingError, StorageError, OutputRefused):
        raise
    except TimeoutError:
        raise HostingError(f"copying an output file took longer than {limit:g} s")
    except FetchRefused as e:
        raise HostingError(f"an output file could not be downloaded: {e}")
    except (httpx.HTTPError, httpx.InvalidURL, OSError, ValueError) as e:
        raise HostingError(f"an output file could not be downloaded: {type(e).__name__}: {e}".rstrip(": "))
    except Exception as e:  # a bug or an odd library error must not crash the poll chain
        log.exception("copying %s failed unexpectedly", name)
        raise HostingError(f"an output file could not be copied ({type(e).__name__})")


async def _copy_all(w: WorkerContext, store: FileStore, job_id: str, urls: list[str],
                    key: str) -> dict[str, str]:
    mapping: dict[str, str] = {}
    stored: list[str] = []
    room = w.settings.hosting_max_total_bytes
    with tempfile.TemporaryDirectory(prefix="syncnode-host-") as tmp:
        try:
            for i, url in enumerate(urls):
                mapping[url], name, size = await _copy_one(w, store, f"{job_id}/{i}", url, key,
                                                           Path(tmp) / str(i), room)
                stored.append(name)
                room -= size
        except OutputRefused:
            await _delete(store, stored)  # the task is refunded: leave none of it behind
            raise
    return mapping


async def _delete(store: FileStore, names: list[str]) -> None:
    for name in names:
        try:
            await store.delete(name)
        except Exception as e:  # best effort: the refusal stands either way
            log.warning("deleting %s after a refused output failed: %s", name, e)


async def _attempts(w: WorkerContext, uid: str, job_id: str, output: Any, urls: list[str],
                    key: str) -> tuple[Any, str | None]:
    error = "unknown error"
    for attempt in range(max(1, w.settings.hosting_attempts)):
        if attempt:
            await asyncio.sleep(min(10.0, 1.0 * 2 ** (attempt - 1)))
        try:
            store = await store_for(w, uid)
            return replace_urls(output, await _copy_all(w, store, job_id, urls, key)), None
        except (HostingError, StorageError) as e:
            error = str(e)
        except OutputRefused:
            raise
        except Exception as e:  # e.g. the storage row could not be read or decrypted
            log.exception("re-hosting %s failed unexpectedly", job_id)
            error = f"{type(e).__name__}"
        log.warning("re-hosting %s failed (attempt %d): %s", job_id, attempt + 1, error)
    return None, error


async def rehost(w: WorkerContext, uid: str, job_id: str, output: Any, key: str) -> tuple[Any, str | None]:
    """(output with our URLs, None) or, when hosting keeps failing, (provider output, why).
    Raises :class:`OutputRefused` when the output is over a cap: the task cannot be delivered."""
    urls = file_urls(output, provider_hosts(w.settings))
    if not urls:
        return output, None
    if len(urls) > w.settings.hosting_max_files:
        raise OutputRefused(f"The model's output has {len(urls)} files; at most {w.settings.hosting_max_files} "
                            "are copied (SYNCNODE_HOSTING_MAX_FILES), so none was and the task was refunded")
    budget = rehost_budget_seconds(w.settings)
    try:
        async with asyncio.timeout(budget):
            hosted, error = await _attempts(w, uid, job_id, output, urls, key)
    except TimeoutError:
        hosted, error = None, f"copying took longer than {budget:g} s"
    if error is None:
        return hosted, None
    return output, (f"Outputs could not be copied to your storage ({error}); "
                    "these provider URLs expire in an hour")
