"""Completion webhooks: the per-account signing secrets, the events to deliver (an outbox the
``tasks_webhook_event`` trigger fills, migration 0006) and the log of every attempt.

An attempt is claimed before it is sent (``attempts`` goes from n - 1 to n in one conditional
UPDATE), so a delivery job that runs twice sends once; an attempt whose worker died stays
"sending" in the log and the dispatcher starts the next one once its hold expired.
"""

from __future__ import annotations

import base64
import secrets
from dataclasses import dataclass

import asyncpg

from storage.db import Conn
from storage.secrets import SecretBox


@dataclass(frozen=True, slots=True)
class SigningSecrets:
    current: bytes
    # The secret a rotation replaced, while it still signs (None once its overlap ended).
    previous: bytes | None
    previous_until: str | None


class WebhookRepository:
    def __init__(self, conn: Conn) -> None:
        self.conn = conn

    # -- secrets ---------------------------------------------------------------------------

    async def secrets(self, uid: str) -> SigningSecrets | None:
        row = await self.conn.fetchrow(
            """
            SELECT ciphertext, previous_ciphertext, previous_until,
                   previous_until IS NOT NULL AND previous_until > now() AS overlapping
            FROM webhook_secrets WHERE uid = $1
            """,
            uid,
        )
        if row is None:
            return None
        live = bool(row["overlapping"])
        until = row["previous_until"].isoformat().replace("+00:00", "Z") if live else None
        return SigningSecrets(row["ciphertext"], row["previous_ciphertext"] if live else None, until)

    async def create_secret(self, uid: str, ciphertext: bytes) -> SigningSecrets:
        """The account's secrets, storing ``ciphertext`` as its first secret if it had none."""
        await self.conn.execute(
            "INSERT INTO webhook_secrets (uid, ciphertext) VALUES ($1, $2) ON CONFLICT (uid) DO NOTHING",
            uid, ciphertext,
        )
        found = await self.secrets(uid)
        assert found is not None
        return found

    async def rotate_secret(self, uid: str, ciphertext: bytes, overlap_s: int) -> SigningSecrets:
        """Make ``ciphertext`` the secret; the one it replaces signs too for ``overlap_s``.

        A second rotation within the overlap drops the oldest secret: two sign at most."""
        await self.conn.execute(
            """
            INSERT INTO webhook_secrets (uid, ciphertext) VALUES ($1, $2)
            ON CONFLICT (uid) DO UPDATE SET
                previous_ciphertext = webhook_secrets.ciphertext,
                previous_until = now() + make_interval(secs => $3),
                ciphertext = EXCLUDED.ciphertext, rotated_at = now()
            """,
            uid, ciphertext, float(overlap_s),
        )
        found = await self.secrets(uid)
        assert found is not None
        return found

    # -- delivery --------------------------------------------------------------------------

    async def due(self, grace_s: float, limit: int) -> list[asyncpg.Record]:
        """Pending events whose next attempt is overdue by ``grace_s`` (its job was lost)."""
        return list(await self.conn.fetch(
            """
            SELECT id, attempts FROM webhook_events
            WHERE state = 'pending' AND next_attempt_at < now() - make_interval(secs => $1)
            ORDER BY next_attempt_at LIMIT $2
            """,
            grace_s, limit,
        ))

    async def expire(self, older_than_s: float) -> int:
        """Give up events still pending that long after they happened (an attempt that never
        came back, or one that kept crashing); the newest attempt's log entry says why."""
        n = await self.conn.fetchval(
            """
            WITH e AS (
                UPDATE webhook_events SET state = 'failed', updated_at = now()
                WHERE state = 'pending' AND created_at < now() - make_interval(secs => $1)
                RETURNING id
            )
            SELECT count(*) FROM e
            """,
            older_than_s,
        )
        return int(n)

    async def for_attempt(self, event_id: int) -> asyncpg.Record | None:
        """The event with what its document is built from (the task's final output and error)."""
        return await self.conn.fetchrow(
            """
            SELECT e.id, e.uid, e.event, e.url, e.task_status, e.state, e.attempts,
                   extract(epoch FROM now() - e.created_at) AS age_s, t.job_id, t.output, t.error
            FROM webhook_events e JOIN tasks t ON t.id = e.task_id
            WHERE e.id = $1
            """,
            event_id,
        )

    async def claim(self, event_id: int, attempt: int, hold_s: float) -> bool:
        """Take attempt ``attempt`` (exactly once) and log it as sending; False if it was taken
        already or the event is over. Nobody starts another attempt for ``hold_s``."""
        got = await self.conn.fetchval(
            """
            WITH e AS (
                UPDATE webhook_events SET attempts = $2, updated_at = now(),
                       next_attempt_at = now() + make_interval(secs => $3)
                WHERE id = $1 AND state = 'pending' AND attempts = $2 - 1
                RETURNING id
            )
            INSERT INTO webhook_attempts (event_id, attempt) SELECT id, $2 FROM e
            RETURNING event_id
            """,
            event_id, attempt, hold_s,
        )
        return got is not None

    async def finish(self, event_id: int, attempt: int, *, outcome: str, status_code: int | None,
                     error: str | None, duration_ms: int, retry_in_s: float | None) -> None:
        """Log how attempt ``attempt`` ended; the event is delivered, failed, or retried later."""
        state = {"delivered": "delivered", "failed": "failed"}.get(outcome, "pending")
        await self.conn.execute(
            """
            WITH a AS (
                UPDATE webhook_attempts SET outcome = $3, status_code = $4, error = $5, duration_ms = $6
                WHERE event_id = $1 AND attempt = $2
            )
            UPDATE webhook_events SET state = $7, updated_at = now(),
                   next_attempt_at = now() + make_interval(secs => coalesce($8, 0))
            WHERE id = $1 AND attempts = $2
            """,
            event_id, attempt, outcome, status_code, error, duration_ms, state, retry_in_s,
        )

    async def for_task(self, task_id: int) -> list[asyncpg.Record]:
        """Every event of a task with its attempts, oldest first (GET /tasks/{id}/deliveries)."""
        return list(await self.conn.fetch(
            """
            SELECT e.id, e.event, e.url, e.state, e.attempts, e.created_at, e.next_attempt_at,
                   coalesce((
                       SELECT jsonb_agg(jsonb_build_object(
                           'attempt', a.attempt, 'started_at', a.started_at, 'duration_ms', a.duration_ms,
                           'status_code', a.status_code, 'outcome', a.outcome, 'error', a.error)
                           ORDER BY a.attempt)
                       FROM webhook_attempts a WHERE a.event_id = e.id), '[]'::jsonb) AS tries
            FROM webhook_events e WHERE e.task_id = $1
            ORDER BY e.id
            """,
            task_id,
        ))


def new_signing_secret() -> str:
    """A Standard Webhooks secret: ``whsec_`` + base64 of 32 random bytes."""
    return "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()


async def signing_secrets(conn: Conn, box: SecretBox, uid: str) -> tuple[str, str | None, str | None]:
    """(current, previous or None, previous valid until), decrypted; the first use creates one."""
    repo = WebhookRepository(conn)
    found = await repo.secrets(uid) or await repo.create_secret(uid, box.encrypt(new_signing_secret()))
    previous = box.decrypt(found.previous) if found.previous is not None else None
    return box.decrypt(found.current), previous, found.previous_until
