"""A task's final result: what a worker publishes, a waiting request reads, and a failure's status.

One frozen type for the one shape that crosses from worker (or ingress) to whoever waits, as
httpx's ``Response`` is for an answer: built from the task row (``from_row`` / ``finished``),
sent as JSON (``to_json``, pushed on the done or reply list by ``storage/status.py``), read
back (``from_json``), and turned into an HTTP error (``raise_for_failure``). The JSON is the
wire format clients and redis-cli users read, key for key::

    {"status", "output", "error", "task_id", "model", "cost_micros", "updated_at"}
    + "client_error"                    when the task failed at a step that says whose fault it was
    + "upstream_status", "retry_after"  when a provider's answer ended it (both, either may be null)
    + "upstream_code", "upstream_param" each only when that answer's OpenAI error object had one

A failure becomes (``failure_error``, also for a stream's end entry)::

    the provider rate-limited it (429)   → RateLimited 429 + its Retry-After (/v1; see keep_rate_limit)
    the request's fault (client_error)   → BadRequest 400
    anything else (5xx, network, cancel) → UpstreamError 502
The first two carry the provider's ``code`` and ``param`` for /v1's error body (the reference
API's ``{"error": message}`` has no place for them).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Protocol

from jobs.errors import BadRequest, RateLimited, SyncNodeError, UpstreamError
from jobs.serialize import dumps, loads

# The status a client sees: queued and running tasks are both "in_progress" (reference).
PUBLIC_STATUS = {"queued": "in_progress", "running": "in_progress", "completed": "completed",
                 "failed": "failed", "canceled": "canceled"}


class Row(Protocol):
    """A task row (asyncpg.Record) or the columns a finishing statement returned."""

    def __getitem__(self, key: str) -> Any: ...


@dataclass(frozen=True, slots=True)
class Upstream:
    """What a provider answered when it ended the task: what /v1 needs to answer as OpenAI would."""

    status: int | None
    retry_after: float | None = None
    # OpenAI's error.code / error.param as the provider sent them (workers/providers/errors.py
    # ``error_field`` checked them), so an SDK user can branch on e.code == "model_not_found".
    code: str | None = None
    param: str | None = None

    @classmethod
    def from_row(cls, row: Row) -> Upstream | None:
        """What ``TaskRepository.finish_unpaid`` stored of it (its upstream_* columns).

        A provider that ended the task without answering (a network error: all four None) reads
        back as None: the same HTTP answer (``failure_error``), only without the JSON's nulls."""
        said = cls(row["upstream_status"], row["upstream_retry_after"], row["upstream_code"],
                   row["upstream_param"])
        return None if said == cls(None) else said


@dataclass(frozen=True, slots=True)
class TaskResult:
    status: str  # public spelling (PUBLIC_STATUS)
    output: Any
    error: str | None
    task_id: int
    model: str | None
    cost_micros: int  # what the task cost in the end: 0 once refunded
    updated_at: str  # ISO 8601, as the row's updated_at
    client_error: bool | None = None  # None: not said (absent from the JSON)
    upstream: Upstream | None = None

    @classmethod
    def from_row(cls, row: Row) -> TaskResult:
        """What a whole task row (``SELECT *``) says now: for a failure, what the worker's own
        result said, so that a replay (same Idempotency-Key) answers as the first request did."""
        return cls.finished(row, row["status"], output=row["output"], error=row["error"],
                            refunded=row["refunded"], client_error=row["client_error"],
                            upstream=Upstream.from_row(row))

    @classmethod
    def finished(cls, row: Row, status: str, *, output: Any = None, error: str | None = None,
                 refunded: bool = False, client_error: bool | None = None,
                 upstream: Upstream | None = None) -> TaskResult:
        """From the columns a finishing statement returned (id, model, cost_micros, updated_at)
        and what it wrote (``status`` in either spelling)."""
        return cls(status=PUBLIC_STATUS.get(status, status), output=output, error=error, task_id=row["id"],
                   model=row["model"], cost_micros=0 if refunded else row["cost_micros"],
                   updated_at=row["updated_at"].isoformat(), client_error=client_error, upstream=upstream)

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"status": self.status, "output": self.output, "error": self.error,
                             "task_id": self.task_id, "model": self.model, "cost_micros": self.cost_micros,
                             "updated_at": self.updated_at}
        if self.client_error is not None:
            d["client_error"] = self.client_error
        if self.upstream is not None:
            d["upstream_status"] = self.upstream.status
            d["retry_after"] = self.upstream.retry_after
            # Only when said: a result without them keeps its old bytes, and old readers ignore them.
            if self.upstream.code is not None:
                d["upstream_code"] = self.upstream.code
            if self.upstream.param is not None:
                d["upstream_param"] = self.upstream.param
        return d

    def to_json(self) -> bytes:
        return dumps(self.to_dict())

    @classmethod
    def from_json(cls, data: bytes | str) -> TaskResult:
        d = loads(data)
        upstream = Upstream(d["upstream_status"], d.get("retry_after"), d.get("upstream_code"),
                            d.get("upstream_param")) if "upstream_status" in d else None
        return cls(status=d["status"], output=d.get("output"), error=d.get("error"), task_id=d["task_id"],
                   model=d.get("model"), cost_micros=d["cost_micros"], updated_at=d["updated_at"],
                   client_error=d.get("client_error"), upstream=upstream)

    def raise_for_failure(self, job_id: str, *, extra: dict[str, Any] | None = None,
                          keep_rate_limit: bool = True) -> TaskResult:
        """This result if the task completed; else raise the error its failure maps to."""
        if self.status == "completed":
            return self
        raise failure_error(self.error or f"Task {self.status}", job_id, client_error=bool(self.client_error),
                            upstream=self.upstream, extra=extra, keep_rate_limit=keep_rate_limit)


def failure_error(message: str, job_id: str, *, client_error: bool, upstream: Upstream | None,
                  extra: dict[str, Any] | None = None, keep_rate_limit: bool = True) -> SyncNodeError:
    """The error a failed task answers with (refunded or not, the tree in the module doc).

    ``keep_rate_limit``: a provider's rate limit stays a 429 with its Retry-After, so an SDK's
    retry waits it out (/v1). The reference API (``keep_rate_limit=False``) answers it as the 502
    of any provider that gave up."""
    body = {"job_id": job_id, **(extra or {})}
    code, param = (upstream.code, upstream.param) if upstream is not None else (None, None)
    if keep_rate_limit and upstream is not None and upstream.status == 429:
        ra = upstream.retry_after
        headers = {"Retry-After": str(math.ceil(ra))} if ra is not None else None
        return RateLimited(message, extra=body, headers=headers, code=code, param=param)
    if client_error:
        return BadRequest(message, extra=body, code=code, param=param)
    # A 502 is our verdict (we gave up), not the provider's answer: its code would mislead.
    return UpstreamError(message, extra=body)
