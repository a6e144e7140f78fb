"""Where re-hosted outputs are written: the user's S3 bucket, Bunny storage zone, or local files.

Every backend implements :class:`FileStore`; ``storage.files.config`` builds one from an
account's saved configuration.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol


class StorageError(Exception):
    """A write or check failed; the message says what to fix (shown to the user)."""


class FileStore(Protocol):
    async def put(self, key: str, path: Path, size: int, content_type: str) -> str:
        """Upload the file at ``path`` under ``key``; returns its public URL."""
        ...

    async def delete(self, key: str) -> None:
        ...
