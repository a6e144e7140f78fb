"""The web UI's rows: login emails with password hashes, API key listings, usage numbers.
All SQL the UI's endpoints need is here; the sessions themselves live in Redis (storage/sessions.py)."""

from __future__ import annotations

from datetime import datetime

import asyncpg

from storage.db import Conn


def stamp(updated_at: datetime) -> str:
    return updated_at.isoformat()


class LoginRepository:
    def __init__(self, conn: Conn) -> None:
        self.conn = conn

    async def by_email(self, email: str) -> asyncpg.Record | None:
        return await self.conn.fetchrow(
            "SELECT uid, password_hash, updated_at FROM web_logins WHERE email = $1", email.lower())

    async def set_password(self, uid: str, email: str, password_hash: str) -> str:
        """One login per account: setting it again replaces the email and the hash, and its new
        stamp ends the sessions opened with the old one. Returns the stamp.

        Raises asyncpg.UniqueViolationError when the email belongs to another account.
        """
        v = await self.conn.fetchval(
            """
            INSERT INTO web_logins (email, uid, password_hash) VALUES ($1, $2, $3)
            ON CONFLICT (uid) DO UPDATE
            SET email = EXCLUDED.email, password_hash = EXCLUDED.password_hash, updated_at = clock_timestamp()
            RETURNING updated_at
            """,
            email.lower(), uid, password_hash,
        )
        return stamp(v)

    async def login_stamp(self, uid: str) -> str | None:
        v = await self.conn.fetchval("SELECT updated_at FROM web_logins WHERE uid = $1", uid)
        return None if v is None else stamp(v)

    async def rehash(self, uid: str, password_hash: str) -> None:
        await self.conn.execute("UPDATE web_logins SET password_hash = $2 WHERE uid = $1", uid, password_hash)

    async def uid_for_email(self, email: str) -> str | None:
        """The account signing in with this email, else the one account created with it."""
        v = await self.conn.fetchval(
            "SELECT uid FROM web_logins WHERE email = $1 UNION ALL "
            "(SELECT uid FROM accounts WHERE lower(email) = $1 ORDER BY created_at LIMIT 1) LIMIT 1", email.lower())
        return None if v is None else str(v)

    async def account_email(self, uid: str) -> str | None:
        v = await self.conn.fetchval(
            "SELECT coalesce(w.email, a.email) FROM accounts a LEFT JOIN web_logins w ON w.uid = a.uid "
            "WHERE a.uid = $1", uid)
        return None if v is None else str(v)


class ApiKeyRepository:
    def __init__(self, conn: Conn) -> None:
        self.conn = conn

    async def list(self, uid: str) -> list[asyncpg.Record]:
        return list(await self.conn.fetch(
            "SELECT prefix, created_at, revoked_at FROM api_keys WHERE uid = $1 ORDER BY created_at DESC", uid))

    async def revoke(self, uid: str, prefix: str) -> int | None:
        """Revoke the account's live keys with this prefix; returns how many, or None when they
        are its last live keys (revoked, nothing could call the API again to make another).
        Locks the account row so two revokes cannot each leave the other's key as the last."""
        if isinstance(self.conn, asyncpg.Pool):
            async with self.conn.acquire() as conn:
                return await ApiKeyRepository(conn).revoke(uid, prefix)
        async with self.conn.transaction():
            await self.conn.execute("SELECT 1 FROM accounts WHERE uid = $1 FOR UPDATE", uid)
            live = await self.conn.fetchrow(
                "SELECT count(*) FILTER (WHERE prefix = $2) AS these, count(*) FILTER (WHERE prefix <> $2) AS others "
                "FROM api_keys WHERE uid = $1 AND revoked_at IS NULL", uid, prefix)
            assert live is not None
            if live["these"] and not live["others"]:
                return None
            rows = await self.conn.fetch(
                "UPDATE api_keys SET revoked_at = now() WHERE uid = $1 AND prefix = $2 AND revoked_at IS NULL "
                "RETURNING 1", uid, prefix)
        return len(rows)

    async def exists(self, uid: str, prefix: str) -> bool:
        return bool(await self.conn.fetchval(
            "SELECT 1 FROM api_keys WHERE uid = $1 AND prefix = $2", uid, prefix))

    async def add_capped(self, uid: str, key_hash: bytes, prefix: str, limit: int) -> bool:
        """Add a key unless the account already has ``limit`` live ones; False when refused.
        Locks the account row so concurrent creates cannot both pass the count."""
        if isinstance(self.conn, asyncpg.Pool):
            async with self.conn.acquire() as conn:
                return await ApiKeyRepository(conn).add_capped(uid, key_hash, prefix, limit)
        async with self.conn.transaction():
            await self.conn.execute("SELECT 1 FROM accounts WHERE uid = $1 FOR UPDATE", uid)
            live = await self.conn.fetchval(
                "SELECT count(*) FROM api_keys WHERE uid = $1 AND revoked_at IS NULL", uid)
            if live >= limit:
                return False
            await self.conn.execute(
                "INSERT INTO api_keys (key_hash, uid, prefix) VALUES ($1, $2, $3)", key_hash, uid, prefix)
        return True


class UsageRepository:
    def __init__(self, conn: Conn) -> None:
        self.conn = conn

    async def spend_per_day(self, uid: str, days: int) -> list[asyncpg.Record]:
        """Net spend (charges minus refunds) per UTC day, oldest first, every day present."""
        return list(await self.conn.fetch(
            """
            SELECT d::date AS day, coalesce(-sum(l.amount_micros), 0)::bigint AS spend_micros
            FROM generate_series((now() AT TIME ZONE 'utc')::date - ($2::int - 1),
                                 (now() AT TIME ZONE 'utc')::date, interval '1 day') AS d
            LEFT JOIN ledger l ON l.uid = $1 AND l.kind IN ('charge', 'refund')
                 AND l.created_at >= d AT TIME ZONE 'utc' AND l.created_at < (d + interval '1 day') AT TIME ZONE 'utc'
            GROUP BY d ORDER BY d
            """,
            uid, days,
        ))

    async def counts_by_status(self, uid: str) -> dict[str, int]:
        rows = await self.conn.fetch(
            "SELECT status, count(*) AS n FROM tasks WHERE uid = $1 AND deleted_at IS NULL GROUP BY status", uid)
        return {r["status"]: int(r["n"]) for r in rows}
