"""An S3 (or S3-compatible: R2, MinIO, Wasabi…) bucket through aiobotocore."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from aiobotocore.session import get_session
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from storage.files import StorageError


class S3Store:
    def __init__(self, *, bucket: str, region: str, endpoint_url: str | None, access_key_id: str,
                 secret_access_key: str, public_base_url: str | None, timeout: float = 120.0) -> None:
        self.bucket = bucket
        self.region = region
        self.endpoint_url = endpoint_url or None
        self.creds = (access_key_id, secret_access_key)
        self.timeout = timeout
        if public_base_url:
            self.public = public_base_url.rstrip("/")
        elif self.endpoint_url:
            self.public = f"{self.endpoint_url.rstrip('/')}/{bucket}"
        else:
            self.public = f"https://{bucket}.s3.{region}.amazonaws.com"

    def _client(self) -> Any:
        return get_session().create_client(
            "s3", region_name=self.region, endpoint_url=self.endpoint_url,
            aws_access_key_id=self.creds[0], aws_secret_access_key=self.creds[1],
            config=Config(connect_timeout=10, read_timeout=self.timeout, retries={"max_attempts": 2},
                          signature_version="s3v4"))

    async def put(self, key: str, path: Path, size: int, content_type: str) -> str:
        try:
            async with self._client() as s3:
                with path.open("rb") as body:
                    await s3.put_object(Bucket=self.bucket, Key=key, Body=body, ContentLength=size,
                                        ContentType=content_type)
        except ClientError as e:
            err = e.response.get("Error", {})
            raise StorageError(f"S3 refused the upload: {err.get('Code')}: {err.get('Message')}")
        except (BotoCoreError, OSError) as e:
            raise StorageError(f"S3 unreachable: {e}")
        return f"{self.public}/{key}"

    async def delete(self, key: str) -> None:
        try:
            async with self._client() as s3:
                await s3.delete_object(Bucket=self.bucket, Key=key)
        except (ClientError, BotoCoreError, OSError) as e:
            raise StorageError(f"S3 delete failed: {e}")
