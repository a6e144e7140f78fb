"""A finished task's answer on /v1: its output, or the OpenAI-shaped error its failure maps to."""

from __future__ import annotations

import math
from typing import Any

from jobs.errors import BadRequest, GatewayTimeout, RateLimited, SyncNodeError, UpstreamError

# The OpenAI SDKs retry 5xx; a task still running must not be paid for a second time that way.
NO_RETRY = {"x-should-retry": "false"}


def failure(result: dict[str, Any], job_id: str) -> SyncNodeError:
    """A provider's rate limit stays a 429 (with its Retry-After, so the SDK's retry waits it
    out); its other 4xx are the request's fault (400); anything else is a 502. All refunded."""
    message = str(result.get("error") or f"Task {result.get('status')}")
    extra = {"job_id": job_id}
    status = result.get("upstream_status")
    if status not in (None, "") and int(status) == 429:
        ra = result.get("retry_after")
        headers = {"Retry-After": str(math.ceil(float(ra)))} if ra not in (None, "") else None
        return RateLimited(message, extra=extra, headers=headers)
    if result.get("client_error") in (True, 1, "1"):
        return BadRequest(message, extra=extra)
    return UpstreamError(message, extra=extra)


def timed_out(job_id: str, task_id: int) -> GatewayTimeout:
    return GatewayTimeout(
        f"The task did not finish in time; it is still running: GET /v1/tasks/{task_id}/stream or "
        f"/tasks/{task_id} for its answer", extra={"job_id": job_id, "task_id": task_id}, headers=NO_RETRY)
