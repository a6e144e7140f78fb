"""Flat combining: many concurrent callers, one round trip per batch.

Per key, at most one batch runs at a time; whatever arrives while it runs goes into the next
one. A quiet key pays nothing: its caller runs a batch of one itself, inline (no task, no
future, no extra turn of the event loop: at concurrency 1 a request crosses five of these, and
each task hop was a wake-up in series). A busy key amortises one statement, one commit and one
fsync over every caller that arrived meanwhile, drained by a task of its own; a key that had
company keeps starting its batches in a task, a turn later, until a few lone batches in a row, so that callers arriving
in the same turn share the first statement too (inline, the first of them would go alone and
cost a statement of its own). For the ledger
this also means the hot account row is locked by one statement at a time instead of by a
queue of waiting transactions.

Cancellation: a caller that goes away never cancels a batch that holds other callers' items
(those run in the drain task, shielded). An inline batch holds only its caller's item, so
cancelling that caller cancels its own statement, as an unbatched call would; the items that
queued behind it are handed to a drain task either way.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Hashable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
T = TypeVar("T")
R = TypeVar("R")

# Lone batches in a row after which a crowded key is quiet again (its callers go inline).
_QUIET_AFTER = 3


class Combiner(Generic[K, T, R]):
    def __init__(self, run: Callable[[K, list[T]], Awaitable[list[R]]], max_batch: int = 200) -> None:
        self._run = run
        self._max = max_batch
        self._queues: dict[K, list[tuple[T, asyncio.Future[R]]]] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        # Keys whose last batch had more than one caller (or callers waiting behind it).
        self._crowded: set[K] = set()
        # Consecutive batches of one of a crowded key.
        self._singles: dict[K, int] = {}

    async def submit(self, key: K, item: T) -> R:
        queue = self._queues.get(key)
        if queue is None and key not in self._crowded:
            return await self._inline(key, item)
        fut: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        if queue is None:
            self._queues[key] = [(item, fut)]
            self._start_drain(key)
        else:
            queue.append((item, fut))
        # shield: a caller that goes away must not cancel the batch the others are in.
        return await asyncio.shield(fut)

    def _start_drain(self, key: K) -> None:
        task = asyncio.create_task(self._drain(key))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _inline(self, key: K, item: T) -> R:
        """The idle key's batch of one, run by its caller; arrivals meanwhile queue behind it."""
        self._queues[key] = []
        try:
            results = await self._run(key, [item])
        finally:
            if self._queues[key]:
                self._crowded.add(key)
                self._start_drain(key)
            else:
                del self._queues[key]
        (result,) = results
        return result

    async def _drain(self, key: K) -> None:
        queue = self._queues[key]
        try:
            while queue:
                batch = queue[: self._max]
                del queue[: self._max]
                if len(batch) > 1:
                    self._crowded.add(key)
                    self._singles.pop(key, None)
                elif key in self._crowded:
                    # A busy key goes back to inline only after a run of lone batches: under load,
                    # one batch of one now and then is not quiet, and going inline then splits the
                    # next batch in two (smaller batches: more statements per request).
                    self._singles[key] = self._singles.get(key, 0) + 1
                    if self._singles[key] >= _QUIET_AFTER:
                        self._crowded.discard(key)
                        del self._singles[key]
                try:
                    results = await self._run(key, [item for item, _ in batch])
                except asyncio.CancelledError as e:
                    _fail(batch, e)
                    raise
                except Exception as e:
                    if len(batch) == 1:
                        _fail(batch, e)
                    else:
                        # One bad item must not fail its neighbours: run each on its own.
                        await self._one_by_one(key, batch)
                    continue
                for (_, fut), result in zip(batch, results, strict=True):
                    if not fut.done():
                        fut.set_result(result)
        finally:
            del self._queues[key]
            _fail(queue, RuntimeError("batch runner stopped"))

    async def _one_by_one(self, key: K, batch: list[tuple[T, asyncio.Future[R]]]) -> None:
        for item, fut in batch:
            try:
                (result,) = await self._run(key, [item])
            except asyncio.CancelledError as e:
                _fail([(item, fut)], e)
                raise
            except Exception as e:
                _fail([(item, fut)], e)
            else:
                if not fut.done():
                    fut.set_result(result)


def _fail(batch: list[tuple[T, asyncio.Future[R]]], exc: BaseException) -> None:
    for _, fut in batch:
        if not fut.done():
            fut.set_exception(exc)
