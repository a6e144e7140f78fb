"""Accounts, their API keys and their encrypted provider keys. All SQL for them is here."""

from __future__ import annotations

from typing import Any

import asyncpg

from storage.db import Conn

# pg_advisory_xact_lock(class, hashtext(email)): creations with one email take turns.
_EMAIL_LOCK = 7_300_002


class AccountRepository:
    def __init__(self, conn: Conn) -> None:
        self.conn = conn

    async def email_taken(self, email: str, but: str | None = None) -> bool:
        """Whether an account (other than ``but``) has this (lower-cased) email, as its own or as
        its web sign-in."""
        return bool(await self.conn.fetchval(
            "SELECT EXISTS (SELECT 1 FROM web_logins WHERE email = $1 AND uid IS DISTINCT FROM $2) "
            "OR EXISTS (SELECT 1 FROM accounts WHERE lower(email) = $1 AND uid IS DISTINCT FROM $2)",
            email, but))

    async def claim_email(self, email: str, uid: str | None = None) -> bool:
        """Whether the (lower-cased) email is free for ``uid`` (None: an account being made),
        holding it until the transaction ends: a second claim of it waits, then sees the first
        one's row. Older accounts may share an email, so no unique index can say this. Inside a
        transaction only."""
        # Two statements: one statement's snapshot predates its wait for the lock.
        await self.conn.execute("SELECT pg_advisory_xact_lock($1, hashtext($2))", _EMAIL_LOCK, email)
        return not await self.email_taken(email, uid)

    async def create(self, uid: str, email: str | None, grant_micros: int) -> int:
        """Create the account with its starting grant; returns the balance."""
        row = await self.conn.fetchrow(
            """
            WITH a AS (
                INSERT INTO accounts (uid, email, balance_micros) VALUES ($1, $2, $3)
                RETURNING uid, balance_micros
            ), l AS (
                INSERT INTO ledger (uid, amount_micros, kind, reason)
                SELECT uid, $3, 'grant', 'starting balance' FROM a WHERE $3 > 0
            )
            SELECT balance_micros FROM a
            """,
            uid, email, grant_micros,
        )
        assert row is not None
        return int(row["balance_micros"])

    async def ensure(self, uid: str, grant_micros: int) -> None:
        """Provision an account on first sight (a Supabase user's first request)."""
        await self.conn.execute(
            """
            WITH a AS (
                INSERT INTO accounts (uid, balance_micros) VALUES ($1, $2)
                ON CONFLICT (uid) DO NOTHING RETURNING uid
            )
            INSERT INTO ledger (uid, amount_micros, kind, reason)
            SELECT uid, $2, 'grant', 'starting balance' FROM a WHERE $2 > 0
            """,
            uid, grant_micros,
        )

    async def exists(self, uid: str) -> bool:
        return bool(await self.conn.fetchval("SELECT 1 FROM accounts WHERE uid = $1", uid))

    async def add_api_key(self, uid: str, key_hash: bytes, prefix: str) -> None:
        await self.conn.execute(
            "INSERT INTO api_keys (key_hash, uid, prefix) VALUES ($1, $2, $3)", key_hash, uid, prefix
        )

    async def uid_for_api_key(self, key_hash: bytes) -> str | None:
        uid = await self.conn.fetchval(
            "SELECT uid FROM api_keys WHERE key_hash = $1 AND revoked_at IS NULL", key_hash
        )
        return None if uid is None else str(uid)

    async def balance(self, uid: str) -> int | None:
        v = await self.conn.fetchval("SELECT balance_micros FROM accounts WHERE uid = $1", uid)
        return None if v is None else int(v)

    async def credit(self, uid: str, amount_micros: int, kind: str, reason: str | None) -> int | None:
        """Add (or with a negative amount remove) credit as a ledger row; None if no such account.

        Raises asyncpg.CheckViolationError when a removal would take the balance below zero.
        """
        row = await self.conn.fetchrow(
            """
            WITH a AS (
                UPDATE accounts SET balance_micros = balance_micros + $2::bigint
                WHERE uid = $1 AND ($2::bigint >= 0 OR balance_micros + $2::bigint >= 0)
                RETURNING uid, balance_micros
            ), l AS (
                INSERT INTO ledger (uid, amount_micros, kind, reason) SELECT uid, $2, $3, $4 FROM a
            )
            SELECT (SELECT balance_micros FROM a) AS balance,
                   EXISTS (SELECT 1 FROM accounts WHERE uid = $1) AS account_exists
            """,
            uid, amount_micros, kind, reason,
        )
        assert row is not None
        if row["balance"] is None and row["account_exists"]:
            # Only Stripe refunds and disputes may take a balance below zero (storage/payments.py).
            raise asyncpg.CheckViolationError("the balance cannot go below zero")
        return None if row["balance"] is None else int(row["balance"])

    async def recharge_amount(self, uid: str) -> int | None:
        v = await self.conn.fetchval("SELECT recharge_amount_micros FROM accounts WHERE uid = $1", uid)
        return None if v is None else int(v)

    async def set_recharge_amount(self, uid: str, micros: int) -> None:
        await self.conn.execute("UPDATE accounts SET recharge_amount_micros = $2 WHERE uid = $1", uid, micros)

    async def set_provider_keys(self, uid: str, keys: dict[str, tuple[bytes, str] | None]) -> None:
        """Upsert each (ciphertext, masked) pair; a None value deletes that key."""
        conn = self.conn
        for name, value in keys.items():
            if value is None:
                await conn.execute("DELETE FROM provider_keys WHERE uid = $1 AND name = $2", uid, name)
            else:
                await conn.execute(
                    """
                    INSERT INTO provider_keys (uid, name, ciphertext, masked) VALUES ($1, $2, $3, $4)
                    ON CONFLICT (uid, name) DO UPDATE
                    SET ciphertext = EXCLUDED.ciphertext, masked = EXCLUDED.masked, updated_at = now()
                    """,
                    uid, name, value[0], value[1],
                )

    async def masked_provider_keys(self, uid: str) -> dict[str, str]:
        rows = await self.conn.fetch("SELECT name, masked FROM provider_keys WHERE uid = $1", uid)
        return {r["name"]: r["masked"] for r in rows}

    async def provider_key(self, uid: str, name: str) -> bytes | None:
        v: Any = await self.conn.fetchval(
            "SELECT ciphertext FROM provider_keys WHERE uid = $1 AND name = $2", uid, name
        )
        return None if v is None else bytes(v)
