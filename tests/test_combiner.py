"""The Combiner's idle fast path: an idle key's caller runs its batch of one itself, and what
arrives meanwhile is still combined, run and answered, whatever happens to that caller."""

from __future__ import annotations

import asyncio

import pytest

from jobs.batch import _QUIET_AFTER, Combiner


class Recorder:
    """A batch runner that records each batch and the task it ran in, and can be held."""

    def __init__(self) -> None:
        self.batches: list[list[int]] = []
        self.ran_in: list[asyncio.Task[object] | None] = []
        self.gate = asyncio.Event()
        self.gate.set()
        self.started = asyncio.Event()

    async def held(self, c: Combiner[str, int, int], first: int,
                   *behind: int) -> tuple[asyncio.Task[int], list[asyncio.Task[int]]]:
        """``first``'s batch running inline and held at the gate, ``behind`` queued after it."""
        self.gate.clear()
        head = asyncio.create_task(c.submit("k", first))
        await self.started.wait()
        queued = [asyncio.create_task(c.submit("k", i)) for i in behind]
        await asyncio.sleep(0)
        return head, queued

    async def run(self, _: str, items: list[int]) -> list[int]:
        self.batches.append(items)
        self.ran_in.append(asyncio.current_task())
        self.started.set()
        await self.gate.wait()
        if 13 in items:
            raise ValueError("unlucky")
        return [i * 2 for i in items]


async def test_an_idle_key_runs_its_batch_in_the_callers_own_task() -> None:
    r = Recorder()
    c: Combiner[str, int, int] = Combiner(r.run)
    me = asyncio.current_task()
    assert await c.submit("k", 1) == 2
    assert await c.submit("k", 2) == 4
    assert r.batches == [[1], [2]] and r.ran_in == [me, me]
    assert not c._queues and not c._tasks  # nothing left behind for the key


async def test_callers_arriving_during_an_inline_batch_share_the_next_one() -> None:
    r = Recorder()
    c: Combiner[str, int, int] = Combiner(r.run)
    first, rest = await r.held(c, 1, 2, 3, 4)
    r.gate.set()
    assert await first == 2
    assert await asyncio.gather(*rest) == [4, 6, 8]
    assert r.batches == [[1], [2, 3, 4]]
    assert r.ran_in[0] is first and r.ran_in[1] not in (first, *rest)  # the queued batch: a drain task
    await asyncio.sleep(0)
    assert not c._queues and not c._tasks


async def test_a_failing_inline_batch_fails_only_its_caller() -> None:
    r = Recorder()
    c: Combiner[str, int, int] = Combiner(r.run)
    bad, [good] = await r.held(c, 13, 5)
    r.gate.set()
    with pytest.raises(ValueError, match="unlucky"):
        await bad
    assert await good == 10
    await asyncio.sleep(0)
    assert not c._queues


async def test_cancelling_the_inline_caller_still_answers_those_queued_behind_it() -> None:
    r = Recorder()
    c: Combiner[str, int, int] = Combiner(r.run)
    gone, waiting = await r.held(c, 1, 2, 3)
    gone.cancel()
    with pytest.raises(asyncio.CancelledError):
        await gone
    r.gate.set()
    assert await asyncio.gather(*waiting) == [4, 6]
    assert r.batches == [[1], [2, 3]]
    await asyncio.sleep(0)
    assert not c._queues and not c._tasks
    assert await c.submit("k", 7) == 14  # and the key is idle (inline) again


async def test_a_cancelled_caller_in_a_queued_batch_does_not_cancel_its_neighbours() -> None:
    second_started, second_gate = asyncio.Event(), asyncio.Event()
    r = Recorder()

    async def run(key: str, items: list[int]) -> list[int]:
        if r.batches:  # the queued batch: held until its caller has been cancelled
            second_started.set()
            await second_gate.wait()
        return await r.run(key, items)

    c: Combiner[str, int, int] = Combiner(run)
    first, [gone, stays] = await r.held(c, 1, 2, 3)
    r.gate.set()
    assert await first == 2
    await second_started.wait()
    gone.cancel()
    second_gate.set()
    assert await stays == 6
    with pytest.raises(asyncio.CancelledError):
        await gone
    assert r.batches == [[1], [2, 3]]


async def test_a_key_that_had_company_collects_its_next_callers_and_goes_inline_once_quiet() -> None:
    r = Recorder()
    c: Combiner[str, int, int] = Combiner(r.run)
    first, behind = await r.held(c, 1, 2, 3)
    r.gate.set()
    assert await asyncio.gather(first, *behind) == [2, 4, 6]
    # Busy: callers arriving in one turn share one batch (inline, the first would go alone).
    assert await asyncio.gather(*(c.submit("k", i) for i in (4, 5, 6))) == [8, 10, 12]
    assert r.batches[-1] == [4, 5, 6]
    # Lone batches: still busy until _QUIET_AFTER of them in a row (under load one batch of one
    # now and then is not quiet; going inline then would split the next batch in two).
    me = asyncio.current_task()
    for i in range(7, 7 + _QUIET_AFTER):
        assert await c.submit("k", i) == 2 * i
        assert r.batches[-1] == [i] and r.ran_in[-1] is not me
    # Then the key is quiet again, and the next call runs in its caller's task.
    assert await c.submit("k", 20) == 40
    assert r.batches[-1] == [20] and r.ran_in[-1] is me


async def test_one_lone_batch_between_busy_ones_keeps_the_key_busy() -> None:
    r = Recorder()
    c: Combiner[str, int, int] = Combiner(r.run)
    first, [behind] = await r.held(c, 0, 9)  # company: the key is busy from here on
    r.gate.set()
    assert list(await asyncio.gather(first, behind)) == [0, 18]
    me = asyncio.current_task()
    for _ in range(3):
        assert await asyncio.gather(*(c.submit("k", i) for i in (1, 2))) == [2, 4]
        assert await c.submit("k", 3) == 6  # one caller alone, between busy batches
        assert r.ran_in[-1] is not me  # drained in a task, not inline
    assert r.batches[-2:] == [[1, 2], [3]]
