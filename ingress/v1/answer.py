"""What /v1 answers for a task that did not finish in time (a failed one: ``TaskResult.raise_for_failure``)."""

from __future__ import annotations

from jobs.errors import GatewayTimeout

# The OpenAI SDKs retry 5xx; a task still running must not be paid for a second time that way.
NO_RETRY = {"x-should-retry": "false"}


def timed_out(job_id: str, task_id: int, *, streamed: bool = False) -> GatewayTimeout:
    # Only a streamed task has events to read again: /v1/tasks/{id}/stream is a 404 for any other.
    where = f"GET /v1/tasks/{task_id}/stream or /tasks/{task_id}" if streamed else f"GET /tasks/{task_id}"
    return GatewayTimeout(f"The task did not finish in time; it is still running: {where} for its answer",
                          extra={"job_id": job_id, "task_id": task_id}, headers=NO_RETRY)
