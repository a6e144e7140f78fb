"""The asyncpg pool every process uses."""

from __future__ import annotations

from typing import Any

import asyncpg
import orjson
from asyncpg.pool import PoolConnectionProxy

# What a repository runs its SQL on: the pool (autocommit), or a connection inside a transaction.
Conn = asyncpg.Pool | asyncpg.Connection | PoolConnectionProxy


async def _init(conn: asyncpg.Connection) -> None:
    await conn.set_type_codec("jsonb", encoder=lambda v: orjson.dumps(v).decode(),
                              decoder=orjson.loads, schema="pg_catalog")


async def _no_reset(conn: asyncpg.Connection) -> None:
    # Connections carry no session state (no LISTEN, no SET, no open transactions), so the
    # default reset query would be a wasted round trip on every release.
    return None


async def create_pool(dsn: str, *, min_size: int = 2, max_size: int = 20, **kw: Any) -> asyncpg.Pool:
    pool = await asyncpg.create_pool(dsn, min_size=min_size, max_size=max_size, init=_init,
                                     reset=_no_reset, **kw)
    assert pool is not None
    return pool
