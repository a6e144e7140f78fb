"""Local files under ``SYNCNODE_DATA_DIR/files``, served by the ingress at ``/files/``."""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path


class LocalStore:
    def __init__(self, root: Path, public_base: str) -> None:
        self.root = root
        self.public_base = public_base.rstrip("/")

    def _path(self, key: str) -> Path:
        p = (self.root / key).resolve()
        if not p.is_relative_to(self.root.resolve()):
            raise ValueError(f"invalid key {key!r}")
        return p

    async def put(self, key: str, path: Path, size: int, content_type: str) -> str:
        dest = self._path(key)

        def copy() -> None:
            dest.parent.mkdir(parents=True, exist_ok=True)
            tmp = dest.with_suffix(dest.suffix + ".part")
            shutil.copyfile(path, tmp)
            tmp.replace(dest)  # readers never see half a file

        await asyncio.to_thread(copy)
        return f"{self.public_base}/files/{key}"

    async def delete(self, key: str) -> None:
        await asyncio.to_thread(self._path(key).unlink, True)
