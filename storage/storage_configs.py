"""Where each account's generated files go (table ``storage_configs``). All SQL for it is here."""

from __future__ import annotations

from typing import Any

import asyncpg

Conn = asyncpg.Connection | asyncpg.Pool


class StorageConfigRepository:
    def __init__(self, conn: Conn) -> None:
        self.conn = conn

    async def get(self, uid: str) -> asyncpg.Record | None:
        return await self.conn.fetchrow(
            "SELECT provider, settings, ciphertext, masked, updated_at FROM storage_configs WHERE uid = $1",
            uid,
        )

    async def put(self, uid: str, provider: str, settings: dict[str, Any], ciphertext: bytes | None,
                  masked: dict[str, str]) -> None:
        await self.conn.execute(
            """
            INSERT INTO storage_configs (uid, provider, settings, ciphertext, masked)
            VALUES ($1, $2, $3, $4, $5)
            ON CONFLICT (uid) DO UPDATE SET provider = EXCLUDED.provider, settings = EXCLUDED.settings,
                ciphertext = EXCLUDED.ciphertext, masked = EXCLUDED.masked, updated_at = now()
            """,
            uid, provider, settings, ciphertext, masked,
        )
