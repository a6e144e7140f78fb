"""Redis commands packed by hiredis (C) instead of redis-py's asyncio ``pack_command`` (Python).

redis-py's synchronous client packs with ``hiredis.pack_command`` when hiredis is installed; its
asyncio client (5.x, the line arq pins) still packs in Python: ~60 µs for one enqueue's EVALSHA
against ~11 µs, and 7 % of the CPU of both the ingress and a chat worker under load (py-spy).
The bytes on the wire are the same (``tests/test_redis_wire.py``). ``connection_class`` is the
pool's public seam for this; nothing else of the client changes.
"""

from __future__ import annotations

from typing import Any

import hiredis
from redis.asyncio.connection import Connection, ConnectionPool, SSLConnection, UnixDomainSocketConnection
from redis.exceptions import DataError


class _HiredisPacking:
    def pack_command(self, *args: Any) -> list[bytes]:
        # As redis-py does: a command name of several words ("CLIENT SETNAME") is several arguments.
        head = args[0]
        if isinstance(head, str):
            if " " in head:
                args = (*head.split(), *args[1:])
        elif isinstance(head, bytes) and b" " in head:
            args = (*head.split(), *args[1:])
        try:
            return [hiredis.pack_command(args)]
        except TypeError as e:  # None, bool, …: redis-py's own error for what it cannot encode
            raise DataError(f"Invalid input in command {args[0]!r}: {e}") from e


# redis.* is typed as Any in this project (pyproject: its asyncio annotations are unions of sync
# and async results), hence the ignores.
class HiredisConnection(_HiredisPacking, Connection):  # type: ignore[misc]
    pass


class HiredisSSLConnection(_HiredisPacking, SSLConnection):  # type: ignore[misc]
    pass


class HiredisUnixConnection(_HiredisPacking, UnixDomainSocketConnection):  # type: ignore[misc]
    pass


_PACKED_BY_HIREDIS: dict[type[Connection], type[Connection]] = {
    Connection: HiredisConnection,
    SSLConnection: HiredisSSLConnection,
    UnixDomainSocketConnection: HiredisUnixConnection,
}


def packed_by_hiredis(pool: ConnectionPool) -> ConnectionPool:
    """``pool`` (built by ``from_url``, which picks TCP, TLS or a unix socket) with connections
    that pack in C. Call before the pool opens a connection; an unknown class is left as it is."""
    pool.connection_class = _PACKED_BY_HIREDIS.get(pool.connection_class, pool.connection_class)
    return pool
