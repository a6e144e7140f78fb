"""Media tasks through races and partial failures: a late progress write, a poll chain the
sweeper restarts, a create arq gave up on, cancel before a retried create, a webhook secret
that cannot be fetched, a key that cannot be decrypted."""

from __future__ import annotations

import asyncio
import logging
import re
import secrets
from collections.abc import AsyncIterator
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any, cast

import httpx
import pytest

from tests.fixtures.accounts import Account, MakeAccount, audit
from tests.fixtures.media import Sim
from tests.fixtures.workers import start_inprocess_worker, stop_inprocess_worker, worker_ctx
from tests.helpers import generate, wait_status

if TYPE_CHECKING:
    from workers.context import WorkerContext


@pytest.fixture
async def keyed(make_account: MakeAccount) -> tuple[Account, str]:
    key = f"r8_{secrets.token_hex(12)}"
    return await make_account(keys={"replicate_key": key}), key


@pytest.fixture
async def media_only(app: Any, fast_polls: Any) -> AsyncIterator[Any]:
    media = await start_inprocess_worker("media")
    yield media[0]
    await stop_inprocess_worker(*media)


async def _task(app: Any, job_id: str) -> Any:
    from storage.tasks import TaskRepository

    return await TaskRepository(app.state.sn.db).by_job_id(job_id)


async def _until_running(app: Any, job_id: str) -> Any:
    for _ in range(200):
        row = await _task(app, job_id)
        if row["status"] == "running":
            return row
        await asyncio.sleep(0.05)
    raise AssertionError(f"{job_id} never started running")


async def test_late_progress_never_overwrites_a_final_status(client: httpx.AsyncClient, replicate_account: Account,
                                                             sim: Sim, media_only: Any, app: Any) -> None:
    from jobs import keys
    from jobs.results import TaskResult
    from storage.status import now_iso
    from workers.poll import media_poll

    job = await generate(client, replicate_account, "owner/model", {"sim": {"outcome": "never"}})
    await _until_running(app, job)
    # The webhook path published the end meanwhile; a poll that read "processing" writes after it.
    done = TaskResult(status="completed", output="done", error=None, task_id=0, model=None, cost_micros=0,
                      updated_at=now_iso())
    await app.state.sn.status.publish(job, done, notify=False)
    await media_poll(media_only.ctx, job, 0, False)
    raw = await app.state.sn.redis.hget(keys.task_status(job), "status")
    assert raw == b"completed"
    await _end(app, job)


async def test_sweeper_restarts_a_chain_while_the_prediction_runs(
        client: httpx.AsyncClient, replicate_account: Account, sim: Sim, app: Any, fast_polls: Any,
        caplog: pytest.LogCaptureFixture) -> None:
    from jobs import keys

    caplog.set_level(logging.WARNING, logger="syncnode.poll")
    media = await start_inprocess_worker("media")
    job = await generate(client, replicate_account, "owner/model", {"sim": {"seconds": 3}})
    redis = app.state.sn.redis
    raw = None
    for _ in range(200):
        if (raw := await redis.get(keys.poll_chain(job))) is not None:
            break
        await asyncio.sleep(0.05)
    assert raw is not None
    assert await app.state.sn.queue.remove("poll", raw.decode())  # the chain is lost
    poll = await start_inprocess_worker("poll")
    try:
        links: set[int] = set()
        for _ in range(100):
            cur = (await redis.get(keys.poll_chain(job)) or b"").decode()
            if m := re.search(r":poll-s[0-9a-f]+:(\d+)$", cur):
                links.add(int(m.group(1)))
            if (await _task(app, job))["status"] != "running":
                break
            await asyncio.sleep(0.05)
        body = await wait_status(client, replicate_account, job, timeout=15)
    finally:
        await stop_inprocess_worker(*poll)
        await stop_inprocess_worker(*media)
    assert body["replicate_status"] == "completed"
    assert links and max(links) < 50  # a fresh chain, counted from 0
    assert not [r for r in caplog.records if "crashed" in r.getMessage()]


def test_backoff_survives_any_link_number(app: Any) -> None:
    from workers.poll import backoff

    w = cast("WorkerContext", SimpleNamespace(settings=app.state.sn.settings))  # backoff reads only settings
    assert 0 < backoff(w, 10**10) <= app.state.sn.settings.poll_cap_seconds * 1.2


def test_create_job_timeout_covers_every_try(app: Any) -> None:
    from jobs.names import MEDIA_CREATE
    from workers.media import create_budget_seconds
    from workers.settings import MediaWorker, _s

    functions: list[Any] = MediaWorker.functions  # type: ignore[attr-defined]  # a class built by type()
    (create,) = [f for f in functions if f.name == MEDIA_CREATE]
    tries = _s.provider_max_retries + 1
    assert create.timeout_s > create_budget_seconds(_s) >= tries * _s.replicate_create_timeout_seconds


async def _as_if_arq_gave_up_mid_create(app: Any, sim: Sim, key: str, job: str, input_: dict[str, Any],
                                        *, with_prediction: bool) -> None:
    """The state a create job leaves when arq's timeout cut it short after its POST went out."""
    from jobs import keys
    from storage.predictions import PredictionRepository

    st = app.state.sn
    assert await st.queue.remove("media", job)
    await PredictionRepository(st.db).begin_create(job, None)
    if with_prediction:
        r = await sim.http.post("/v1/models/owner/model/predictions", json={"input": input_},
                                headers={"Authorization": f"Bearer {key}"})
        assert r.status_code == 201, r.text
    await st.redis.set(keys.result_key_prefix + job, b"timed out", ex=300)
    assert await st.queue.state(job) == "finished"


async def test_sweeper_reruns_a_create_arq_gave_up_on(client: httpx.AsyncClient, keyed: tuple[Account, str],
                                                      sim: Sim, app: Any, fast_polls: Any) -> None:
    acct, key = keyed
    input_ = {"prompt": "x", "sim": {"seconds": 0.2, "output": "text"}}
    job = await generate(client, acct, "owner/model", input_)
    await _as_if_arq_gave_up_mid_create(app, sim, key, job, input_, with_prediction=True)
    media = await start_inprocess_worker("media")
    poll = await start_inprocess_worker("poll")
    try:
        body = await wait_status(client, acct, job, timeout=20)
    finally:
        await stop_inprocess_worker(*poll)
        await stop_inprocess_worker(*media)
    assert body["replicate_status"] == "completed", body
    assert len(await sim.creates()) == 1  # adopted, not paid twice
    assert (await _task(app, job))["provider_id"] == next(iter(await sim.predictions()))
    assert await audit(app, acct.uid) == (4_980_000, 4_980_000)


async def test_cancel_before_a_retried_create_creates_nothing(client: httpx.AsyncClient,
                                                              keyed: tuple[Account, str], sim: Sim,
                                                              app: Any, fast_polls: Any) -> None:
    from storage.predictions import PredictionRepository

    acct, _ = keyed
    job = await generate(client, acct, "owner/model", {"sim": {"output": "text"}})
    # An earlier run started its create and died before sending it; then the user canceled.
    await PredictionRepository(app.state.sn.db).begin_create(job, None)
    await PredictionRepository(app.state.sn.db).request_cancel(job)
    media = await start_inprocess_worker("media")
    try:
        body = await wait_status(client, acct, job, timeout=10)
    finally:
        await stop_inprocess_worker(*media)
    assert body["replicate_status"] == "canceled"
    assert await sim.creates() == []
    assert await audit(app, acct.uid) == (5_000_000, 5_000_000)


async def test_webhook_secret_failure_falls_back_to_polling(client: httpx.AsyncClient,
                                                            replicate_account: Account, sim: Sim,
                                                            media_workers: Any, app: Any,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    from workers.providers import replicate
    from workers.providers.errors import ProviderRetryable

    async def down(*_: Any, **__: Any) -> str:
        raise ProviderRetryable(replicate.PROVIDER, "secret endpoint down", 503)

    monkeypatch.setattr(app.state.sn.settings, "replicate_webhooks", "on")
    monkeypatch.setattr(replicate, "webhook_secret", down)
    job = await generate(client, replicate_account, "owner/model", {"sim": {"output": "text"}})
    body = await wait_status(client, replicate_account, job)
    assert body["replicate_status"] == "completed"
    (create,) = await sim.creates()
    assert "webhook" not in create["body"]


async def test_undecryptable_key_fails_the_poll_chain(client: httpx.AsyncClient, replicate_account: Account,
                                                      sim: Sim, media_workers: Any, app: Any) -> None:
    job = await generate(client, replicate_account, "owner/model", {"sim": {"outcome": "never"}})
    await _until_running(app, job)
    await app.state.sn.db.execute(
        "UPDATE provider_keys SET ciphertext = $2 WHERE uid = $1 AND name = 'replicate_key'",
        replicate_account.uid, b"not a sealed secret")
    body = await wait_status(client, replicate_account, job, timeout=10)
    assert body["replicate_status"] == "failed" and "replicate_key" in body["error"]
    assert await audit(app, replicate_account.uid) == (5_000_000, 5_000_000)


async def test_polls_do_not_read_the_request(client: httpx.AsyncClient, replicate_account: Account, sim: Sim,
                                             media_workers: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    from storage.predictions import PredictionRepository

    reads: list[bool] = []
    real = PredictionRepository.state

    async def spy(self: PredictionRepository, job_id: str, *, with_request: bool = True) -> Any:
        reads.append(with_request)
        return await real(self, job_id, with_request=with_request)

    monkeypatch.setattr(PredictionRepository, "state", spy)
    job = await generate(client, replicate_account, "owner/model", {"sim": {"seconds": 0.8, "output": "text"}})
    assert (await wait_status(client, replicate_account, job))["replicate_status"] == "completed"
    # A face swap's request holds two base64 images: only the create job reads it, once.
    assert reads.count(True) == 1 and len(reads) >= 3


async def test_queue_remove_loses_a_race_to_a_worker(client: httpx.AsyncClient, replicate_account: Account,
                                                      app: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    from redis.asyncio.client import Pipeline

    from jobs import keys

    job = await generate(client, replicate_account, "owner/model", {})  # no worker: still queued
    real_exists = Pipeline.exists

    async def exists_then_claimed(self: Pipeline, *names: Any) -> Any:
        found = await real_exists(self, *names)
        await app.state.sn.redis.set(keys.in_progress_key_prefix + job, b"1", px=2000)  # a worker took it
        return found

    monkeypatch.setattr(Pipeline, "exists", exists_then_claimed)
    assert await app.state.sn.queue.remove("media", job) is False
    monkeypatch.undo()
    await app.state.sn.redis.delete(keys.in_progress_key_prefix + job)
    assert await app.state.sn.queue.remove("media", job) is True
    await _end(app, job)


async def _end(app: Any, job_id: str) -> None:
    """End a task a test left unfinished, so no later test's worker or sweeper picks it up."""
    from storage.tasks import TaskRepository

    await TaskRepository(app.state.sn.db).finish_unpaid(job_id, "canceled", "test over")


async def test_lost_prediction_lookup_failing_retries_instead_of_refunding(
        client: httpx.AsyncClient, keyed: tuple[Account, str], sim: Sim, app: Any, fast_polls: Any,
        monkeypatch: pytest.MonkeyPatch) -> None:
    from storage.predictions import PredictionRepository
    from workers import media as media_mod
    from workers.providers import replicate
    from workers.providers.errors import ProviderRetryable

    acct, key = keyed
    input_ = {"sim": {"seconds": 0.2, "output": "text"}}
    job = await generate(client, acct, "owner/model", input_)
    # An earlier run's create reached Replicate; then listing predictions fails for a while.
    await PredictionRepository(app.state.sn.db).begin_create(job, None)
    r = await sim.http.post("/v1/models/owner/model/predictions", json={"input": input_},
                            headers={"Authorization": f"Bearer {key}"})
    assert r.status_code == 201
    real, failures = replicate.created_since, [0]

    async def flaky(*args: Any, **kw: Any) -> Any:
        if failures[0] < 2:
            failures[0] += 1
            raise ProviderRetryable(replicate.PROVIDER, "listing is down", 503)
        return await real(*args, **kw)

    monkeypatch.setattr(replicate, "created_since", flaky)
    monkeypatch.setattr(media_mod, "_LOOKUP_AGAIN_S", 0.2)
    media = await start_inprocess_worker("media")
    poll = await start_inprocess_worker("poll")
    try:
        body = await wait_status(client, acct, job, timeout=15)
    finally:
        await stop_inprocess_worker(*poll)
        await stop_inprocess_worker(*media)
    assert body["replicate_status"] == "completed", body
    assert failures[0] == 2 and len(await sim.creates()) == 1
    assert await audit(app, acct.uid) == (4_980_000, 4_980_000)


async def test_cancel_while_outputs_are_rehosted_delivers_and_charges(
        client: httpx.AsyncClient, replicate_account: Account, sim: Sim, media_workers: Any, app: Any,
        monkeypatch: pytest.MonkeyPatch) -> None:
    import workers.poll as poll_mod
    from storage.tasks import TaskRepository
    from workers import hosting

    real = hosting.rehost  # what workers.poll calls until patched below
    copying = asyncio.Event()

    async def slow_rehost(*a: Any, **k: Any) -> Any:
        out = await real(*a, **k)  # the files already reached the user's storage
        copying.set()
        await asyncio.sleep(1.5)   # a slow upload of a further file
        return out

    monkeypatch.setattr(poll_mod, "rehost", slow_rehost)
    job = await generate(client, replicate_account, "owner/model", {"sim": {"seconds": 0.2}})
    await asyncio.wait_for(copying.wait(), 15)
    row = await TaskRepository(app.state.sn.db).by_job_id(job)
    assert row is not None
    await client.post(f"/tasks/{row['id']}/cancel", headers=replicate_account.headers)
    await asyncio.sleep(2.0)
    body = await wait_status(client, replicate_account, job)
    assert body["replicate_status"] == "completed"  # delivered, so not refunded
    balance, total = await audit(app, replicate_account.uid)
    assert balance == total == 4_980_000


async def test_nul_in_prediction_output_is_stored(client: httpx.AsyncClient, replicate_account: Account,
                                                  sim: Sim, media_workers: Any, app: Any) -> None:
    # Postgres refuses U+0000 in jsonb: unhandled, every poll would crash until the deadline refunds.
    job = await generate(client, replicate_account, "owner/model", {"sim": {"seconds": 0.1, "output": "nul"}})
    body = await wait_status(client, replicate_account, job)
    assert body["replicate_status"] == "completed"
    assert body["output"] == ["tok\ufffden", "s"]


async def test_lost_poll_chain_behind_500_running_predictions_is_restarted(
        make_account: MakeAccount, app: Any) -> None:
    from jobs import keys
    from jobs.names import GENERATE
    from jobs.queue import Job
    from storage.charges import NewTask
    from storage.tasks import TaskRepository
    from workers.poll import sweep_predictions

    st = app.state.sn
    acct = await make_account(balance="100", keys={"replicate_key": "r8_backlog"})
    ids = [f"bk-{secrets.token_hex(6)}" for _ in range(510)]
    outcomes = await TaskRepository(st.db).charge_many(acct.uid, [NewTask(
        job_id=j, uid=acct.uid, kind=GENERATE.name, pool=GENERATE.pool, model="o/m", prompt=None,
        request={"model": "o/m", "input": {}}, cost_micros=1, key_name=GENERATE.key_name) for j in ids])
    assert all(o.task_id for o in outcomes)
    await st.db.execute("UPDATE tasks SET status = 'running', provider_id = 'p-' || job_id, "
                        "updated_at = now() - interval '1 minute' WHERE uid = $1", acct.uid)
    # The last (newest) one lost its chain; every other chain has a live link in the queue.
    await st.db.execute("UPDATE tasks SET updated_at = now() - interval '30 seconds' WHERE job_id = $1", ids[-1])
    for j in ids[:-1]:
        link = f"{j}:poll:1"
        await st.queue.enqueue(Job("poll", "media.poll", link, (j, 1, True), defer_ms=600_000))
        await st.redis.set(keys.poll_chain(j), link, ex=600)
    try:
        async with worker_ctx("media") as ctx:
            assert await sweep_predictions(ctx["sn"]) == 1
        assert (await st.redis.get(keys.poll_chain(ids[-1]))).decode().startswith(f"{ids[-1]}:poll-s")
    finally:
        for j in ids:
            await st.queue.remove("poll", f"{j}:poll:1")
            await st.redis.delete(keys.poll_chain(j))
        await st.db.execute("UPDATE tasks SET status = 'canceled' WHERE uid = $1", acct.uid)


def test_a_webhooked_prediction_is_polled_only_as_a_backstop(app: Any) -> None:
    from workers.poll import backoff

    s = app.state.sn.settings
    w = cast("WorkerContext", SimpleNamespace(settings=s))  # backoff reads only settings
    assert s.poll_webhook_backstop_seconds > s.poll_cap_seconds * 1.2 / 0.8
    polled = [backoff(w, 40) for _ in range(50)]
    hooked = [backoff(w, 40, webhook=True) for _ in range(50)]
    assert max(polled) <= s.poll_cap_seconds * 1.2
    assert min(hooked) >= s.poll_webhook_backstop_seconds * 0.8
    # The first links are as quick either way: a short prediction is not left to the backstop.
    assert backoff(w, 0, webhook=True) <= s.poll_first_seconds * 1.2
