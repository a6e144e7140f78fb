"""The body of ``POST /storage`` per provider, its encryption and masking, and turning a saved
configuration into a :class:`FileStore`."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import httpx
import orjson
from pydantic import BaseModel, ConfigDict, Field

from storage.files import FileStore
from storage.files.bunny import BunnyStore
from storage.files.local import LocalStore
from storage.files.s3 import S3Store
from storage.secrets import SecretBox, mask


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")
    uid: str | None = None


class DefaultBody(_Body):
    provider: Literal["default"]


class S3Body(_Body):
    provider: Literal["s3"]
    bucket: str = Field(min_length=3, max_length=63)
    region: str = Field("us-east-1", min_length=1, max_length=64)
    endpoint_url: str | None = Field(None, max_length=500)
    access_key_id: str = Field(min_length=1, max_length=256)
    secret_access_key: str = Field(min_length=1, max_length=256)
    public_base_url: str | None = Field(None, max_length=500)


class BunnyBody(_Body):
    provider: Literal["bunny"]
    storage_zone: str = Field(min_length=1, max_length=128)
    access_key: str = Field(min_length=1, max_length=256)
    region_host: str = Field("storage.bunnycdn.com", min_length=1, max_length=255)
    pull_zone_url: str = Field(min_length=1, max_length=500)


StorageBody = DefaultBody | S3Body | BunnyBody
SECRET_FIELDS = {"s3": ("secret_access_key",), "bunny": ("access_key",), "default": ()}


def split(body: StorageBody) -> tuple[str, dict[str, Any], dict[str, str]]:
    """(provider, non-secret settings, secret fields) of a validated body."""
    data = body.model_dump(exclude={"uid", "provider"}, exclude_none=True)
    secret = {k: data.pop(k) for k in SECRET_FIELDS[body.provider] if k in data}
    return body.provider, data, secret


def seal(box: SecretBox, secret: dict[str, str]) -> tuple[bytes | None, dict[str, str]]:
    if not secret:
        return None, {}
    return box.encrypt(orjson.dumps(secret).decode()), {k: mask(v) for k, v in secret.items()}


def unseal(box: SecretBox, ciphertext: bytes | None) -> dict[str, str]:
    return {} if ciphertext is None else dict(orjson.loads(box.decrypt(ciphertext)))


def endpoints(provider: str, settings: dict[str, Any]) -> list[str]:
    """The URLs a configuration makes the gateway connect to (checked against SSRF)."""
    if provider == "s3" and settings.get("endpoint_url"):
        return [str(settings["endpoint_url"])]
    if provider == "bunny":
        host = str(settings["region_host"])
        return [host if "://" in host else f"https://{host}"]
    return []


def build(provider: str, settings: dict[str, Any], secret: dict[str, str], *, http: httpx.AsyncClient,
          local_root: Path, public_url: str, timeout: float, allow: frozenset[str],
          shared: bool = True) -> FileStore:
    """``http`` must be a guarded client (``storage.egress.guarded_client``): Bunny's host is the user's.
    ``allow`` is SYNCNODE_FETCH_ALLOW, for S3's own guarded connections; ``shared=False`` for a
    one-off store whose S3 client the caller closes (``S3Store.close``)."""
    if provider == "s3":
        return S3Store(bucket=settings["bucket"], region=settings.get("region", "us-east-1"),
                       endpoint_url=settings.get("endpoint_url"), access_key_id=settings["access_key_id"],
                       secret_access_key=secret["secret_access_key"],
                       public_base_url=settings.get("public_base_url"), timeout=timeout, allow=allow,
                       shared=shared)
    if provider == "bunny":
        return BunnyStore(http, storage_zone=settings["storage_zone"], access_key=secret["access_key"],
                          region_host=settings["region_host"], pull_zone_url=settings["pull_zone_url"],
                          timeout=timeout)
    return LocalStore(local_root, public_url)


def operator_default(raw: str | None) -> tuple[str, dict[str, Any], dict[str, str]]:
    """SYNCNODE_DEFAULT_STORAGE (a POST /storage body as JSON) → (provider, settings, secret)."""
    if not raw:
        return "default", {}, {}
    data = orjson.loads(raw)
    body: StorageBody
    if data.get("provider") == "s3":
        body = S3Body.model_validate(data)
    elif data.get("provider") == "bunny":
        body = BunnyBody.model_validate(data)
    else:
        return "default", {}, {}
    return split(body)
