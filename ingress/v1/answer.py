"""What /v1 answers for a task that did not finish in time (a failed one: ``TaskResult.raise_for_failure``)."""

from __future__ import annotations

from jobs.errors import GatewayTimeout

# The OpenAI SDKs retry 5xx; a task still running must not be paid for a second time that way.
NO_RETRY = {"x-should-retry": "false"}


def timed_out(job_id: str, task_id: int) -> GatewayTimeout:
    return GatewayTimeout(
        f"The task did not finish in time; it is still running: GET /v1/tasks/{task_id}/stream or "
        f"/tasks/{task_id} for its answer", extra={"job_id": job_id, "task_id": task_id}, headers=NO_RETRY)
