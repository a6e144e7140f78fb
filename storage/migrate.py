"""Apply ``storage/migrations/*.sql`` in order, each once (``syncnode migrate``)."""

from __future__ import annotations

from importlib import resources

import asyncpg

_LOCK = 7_300_001  # pg_advisory_lock id: concurrent `migrate` runs apply each file once.


async def migrate(dsn: str) -> list[str]:
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute("SELECT pg_advisory_lock($1)", _LOCK)
        await conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations "
            "(version text PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())"
        )
        done = {r["version"] for r in await conn.fetch("SELECT version FROM schema_migrations")}
        files = sorted(
            (f for f in resources.files("storage.migrations").iterdir() if f.name.endswith(".sql")),
            key=lambda f: f.name,
        )
        applied = []
        for f in files:
            if f.name in done:
                continue
            async with conn.transaction():
                await conn.execute(f.read_text())
                await conn.execute("INSERT INTO schema_migrations (version) VALUES ($1)", f.name)
            applied.append(f.name)
        return applied
    finally:
        await conn.close()
