"""GET /storage and POST /storage: where an account's generated files are hosted.

Secrets (S3 secret access key, Bunny storage password) are encrypted with the master key and
only ever shown masked. A configuration is saved only after a test file was written to it
(and deleted again), so a typo surfaces now rather than as a ``hosting_error`` later.
"""

from __future__ import annotations

import secrets
import tempfile
from pathlib import Path
from typing import Annotated, Any

from pydantic import Field, RootModel
from starlette.requests import Request
from starlette.responses import Response

from ingress.api_models import StorageView
from ingress.api_requests import UidQuery
from ingress.api_spec import READ, api
from ingress.body import read_json
from ingress.responses import JSON
from ingress.state import AppState, state
from jobs.errors import BadRequest
from storage.egress import guarded_client
from storage.files import StorageError
from storage.files import config as cfg
from storage.files.netcheck import check_reachable
from storage.files.s3 import S3Store
from storage.storage_configs import StorageConfigRepository


class StorageRequest(RootModel[Annotated[cfg.StorageBody, Field(discriminator="provider")]]):
    """The body, one shape per provider."""


def _render(provider: str, settings: dict[str, Any], masked: dict[str, str]) -> dict[str, Any]:
    return {"provider": provider, **settings, **masked}


@api("Where generated files are hosted (secrets masked)", tags=("files",), auth="bearer", query=UidQuery,
     ok={200: StorageView}, errors=READ)
async def get_storage(request: Request) -> Response:
    st = state(request)
    who = await st.auth.principal(request, request.query_params.get("uid"), public=False)
    row = await StorageConfigRepository(st.db).get(who.uid)
    if row is None:
        return JSON({"provider": "default"})
    return JSON(_render(row["provider"], dict(row["settings"]), dict(row["masked"])))


async def _check(st: AppState, provider: str, settings: dict[str, Any], secret: dict[str, str]) -> None:
    allow = st.settings.fetch_allow_list
    for url in cfg.endpoints(provider, settings):
        await check_reachable(url, allow)  # an early, clear refusal; the connections are guarded too
    # Guarded: the endpoint is the user's, and DNS may answer differently at connect time.
    async with guarded_client(allow, connect_timeout=5, read_timeout=15) as http:
        store = cfg.build(provider, settings, secret, http=http, local_root=st.settings.data_dir / "files",
                          public_url=st.settings.public_url, timeout=15, allow=allow, shared=False)
        try:
            key = f".syncnode-check/{secrets.token_hex(8)}.txt"
            with tempfile.TemporaryDirectory() as tmp:
                path = Path(tmp) / "check.txt"
                path.write_bytes(b"SyncNode storage check\n")
                await store.put(key, path, path.stat().st_size, "text/plain")
            await store.delete(key)
        finally:
            if isinstance(store, S3Store):
                await store.close()


@api("Host generated files on S3, Bunny or the default storage (checked with a test write first)",
     tags=("files",), auth="bearer", body=StorageRequest, ok={200: StorageView}, errors=(*READ, 413))
async def post_storage(request: Request) -> Response:
    st = state(request)
    early = await st.auth.early(request, public=False)
    raw = await read_json(request, 64 << 10)
    uid = raw.get("uid")
    who = await st.auth.confirm(request, early, uid if isinstance(uid, str) else None, public=False)
    if raw.get("provider") not in ("default", "s3", "bunny"):
        raise BadRequest("Invalid provider: expected 's3', 'bunny' or 'default'")
    body = StorageRequest.model_validate(raw).root
    provider, settings, secret = cfg.split(body)
    if provider != "default":
        try:
            await _check(st, provider, settings, secret)
        except StorageError as e:
            raise BadRequest(f"Storage check failed, nothing saved: {e}")
    ciphertext, masked = cfg.seal(st.box, secret)
    await StorageConfigRepository(st.db).put(who.uid, provider, settings, ciphertext, masked)
    return JSON(_render(provider, settings, masked))
