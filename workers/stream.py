"""A streamed chat completion (``POST /v1/chat/completions`` with ``stream: true``) on the worker.

The worker reads the provider's stream and appends each chunk, as the provider sent it, to the
task's Redis Stream (``jobs.keys.chat_stream``, MAXLEN-bounded, expiring); the ingress relays it
(``ingress/v1/relay.py``). After the task is finished in Postgres, one end entry says how it
ended, so a client that reads it finds the ledger already settled:

    d=<chunk JSON>                                  a chunk
    end=completed                                   then [DONE]
    end=failed, error=…, upstream_status=…,         before the first chunk: an OpenAI error
      retry_after=…, started=0|1, client_error=0|1  answer; after it, an error event
      [, upstream_code=…, upstream_param=…]         (the provider's error.code / .param, if said)

While it reads, the worker's one watcher (``workers/cancels.py``) looks every
``v1_cancel_poll_seconds`` for the client's cancel flag (``jobs.keys.stream_cancel``); seeing it
cancels the read, which closes the provider's connection, and the task completes (charged) with
what had arrived.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncGenerator
from typing import Any

import asyncpg
import httpx
import orjson

from jobs import keys
from jobs.results import Upstream
from storage.tasks import TaskRepository
from workers.assemble import Assembler
from workers.context import WorkerContext
from workers.providers import chat as chat_api
from workers.providers.errors import ProviderError, ProviderRetryable, ProviderStreamBroken
from workers.providers.http import call
from workers.providers.retry import RetryPolicy

log = logging.getLogger("syncnode.stream")


def is_streamed(row: asyncpg.Record) -> bool:
    req = row["request"]
    return isinstance(req, dict) and req.get("stream") is True


class StreamRun:
    """One run of a streamed task: the work (for ``run_task``) and the end entry after it."""

    def __init__(self, w: WorkerContext, job_id: str, provider: str, job_try: int = 2) -> None:
        self.w = w
        # arq's count of runs of this job: the first run cannot find chunks of an earlier one.
        self.job_try = job_try
        self.job_id = job_id
        self.provider = provider
        self.key = keys.chat_stream(job_id)
        self.streamed = False
        # The work ran for a task that is not a stream (its request says so, and never changes).
        self.plain = False
        self.started = False

    async def _xadd(self, *entries: dict[str, Any]) -> None:
        """Append entries in one round trip (the chunks of one network read go together)."""
        s = self.w.settings
        async with self.w.redis.pipeline(transaction=False) as pipe:
            for fields in entries:
                pipe.xadd(self.key, fields, maxlen=s.v1_stream_max_entries, approximate=True)
            if not self.started or "end" in entries[-1]:
                pipe.expire(self.key, s.v1_stream_ttl_seconds)
            await pipe.execute()

    async def work(self, w: WorkerContext, row: asyncpg.Record, key: str | None) -> Any:
        self.streamed = True
        assert key is not None
        if self.job_try > 1 and await w.redis.xlen(self.key) > 0:
            # An earlier run (on a worker that died) relayed chunks already: running again would
            # send the client a second answer glued to the first. Ours, not the user's: refunded.
            self.started = True
            raise ProviderStreamBroken("SyncNode", "the worker streaming this task stopped mid-stream; "
                                       "the charge is refunded", refund=True)
        return await self._relay(w, row, key)

    async def _relay(self, w: WorkerContext, row: asyncpg.Record, key: str) -> Any:
        req: dict[str, Any] = row["request"]
        wants_usage = bool((req.get("stream_options") or {}).get("include_usage"))
        # Usage always asked for (the task's record keeps it); relayed only if the client asked.
        body = {**req, "stream": True, "stream_options": {**(req.get("stream_options") or {}),
                                                         "include_usage": True}}
        client = w.http[self.provider]

        async def first() -> tuple[AsyncGenerator[list[bytes], None], list[bytes]]:
            events = chat_api.stream(client, self.provider, key, body)
            try:
                return events, await anext(events)
            except StopAsyncIteration:
                raise ProviderRetryable(self.provider, "the stream ended before its first chunk")
            except BaseException:
                await events.aclose()
                raise

        # Retried like any call, but only until the first chunk: after it the client has text.
        events, batch = await call(self.provider, first, RetryPolicy.chat(w.settings), metrics=w.metrics)
        asm = Assembler()
        reader = asyncio.create_task(self._pump(events, batch, asm, wants_usage))
        watcher = w.stream_cancels.watch(self.job_id)
        try:
            await asyncio.wait({reader, watcher}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            gone = watcher.done() and not watcher.cancelled()  # it completes only on the cancel flag
            w.stream_cancels.forget(self.job_id)
            if not reader.done():
                reader.cancel()  # the client went away (or this job is being cancelled)
            await asyncio.gather(reader, return_exceptions=True)
        if reader.cancelled():
            if not gone:
                raise asyncio.CancelledError
            log.info("stream %s: client went away after %d chunks; provider call closed", self.job_id, asm.chunks)
            return asm.completion(partial=True)
        e = reader.exception()
        if isinstance(e, ProviderError | httpx.TransportError):
            if not self.started:
                raise e  # nothing reached the client: an error answer, and a refund
            msg = e.message if isinstance(e, ProviderError) else f"{type(e).__name__}: {e}".rstrip(": ")
            raise ProviderStreamBroken(self.provider, f"the stream broke off: {msg}", asm.completion(partial=True))
        if e is not None:
            raise e
        return asm.completion()

    async def _pump(self, events: AsyncGenerator[list[bytes], None], batch: list[bytes], asm: Assembler,
                    wants_usage: bool) -> None:
        try:
            while True:
                await self._relay_batch(batch, asm, wants_usage)
                try:
                    batch = await anext(events)
                except StopAsyncIteration:
                    return
        finally:
            await events.aclose()

    async def _relay_batch(self, batch: list[bytes], asm: Assembler, wants_usage: bool) -> None:
        keep: list[dict[str, Any]] = []
        try:
            for data in batch:
                try:
                    chunk = orjson.loads(data)
                except orjson.JSONDecodeError:
                    raise ProviderRetryable(self.provider, f"sent a chunk that is not JSON: {data[:100]!r}")
                if not isinstance(chunk, dict):
                    continue
                chat_api.raise_stream_error(self.provider, chunk)
                asm.add(chunk)
                usage_only = not chunk.get("choices") and chunk.get("usage") is not None
                if wants_usage or not usage_only:
                    keep.append({"d": data})
        finally:
            # Chunks before an error event in the same read still reach the client.
            if keep:
                await self._xadd(*keep)
                self.started = True

    async def finish(self, outcome: str) -> None:
        """The end entry, from the task's final row (run_task has settled the money by now).

        Also for a streamed task that failed before its work ran (its key was removed), and
        never twice: a duplicate run of a finished task finds the end entry there already.
        """
        if self.plain:
            return  # no stream to end, and no need to read the task back to know it
        if outcome == "completed" and self.streamed:
            # This run completed it (only one run can): no other end entry exists.
            with contextlib.suppress(Exception):
                await self._xadd({"end": "completed"})
            return
        row = await TaskRepository(self.w.db).by_job_id(self.job_id)
        if row is None or not is_streamed(row) or row["status"] not in ("completed", "failed", "canceled"):
            return  # not a stream, or not finished by this run (arq will run it again)
        last = await self.w.redis.xrevrange(self.key, count=1)
        if last and b"end" in last[0][1]:
            return
        fields: dict[str, Any] = {"end": row["status"]}
        if row["status"] != "completed":
            # Whose fault and what the provider said, from the row (finish_unpaid kept them): a
            # task failed before its work ran (no provider error here) says it as a replay will.
            up = Upstream.from_row(row)
            fields.update(error=row["error"] or row["status"], started=int(self.started),
                          client_error=int(bool(row["client_error"])))
            if up is not None and up.status:
                fields["upstream_status"] = up.status
            if up is not None and up.retry_after is not None:
                fields["retry_after"] = up.retry_after
            if up is not None and up.code is not None:
                fields["upstream_code"] = up.code
            if up is not None and up.param is not None:
                fields["upstream_param"] = up.param
        with contextlib.suppress(Exception):
            await self._xadd(fields)
