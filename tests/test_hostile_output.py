"""Issue 7, classes 2-4: a public model's output must not cost more than one bounded copy, must
not leak the user's key, must not run script on any origin we serve from, and a prediction at
its deadline ends delivered or refunded, never both.

Everything runs on the real stack: the Replicate simulator prints the hostile output
(``tests/fakes/replicate.py``) and logs every file request, so "re-hosted at most once" and
"stops at the cap" are counted downloads, not assumptions.
"""

from __future__ import annotations

import asyncio
from typing import Any

import boto3
import httpx
import pytest

from tests.fakes import bunny
from tests.fakes import replicate as replicate_sim
from tests.fixtures.accounts import Account, audit
from tests.fixtures.media import Sim
from tests.helpers import CHAT, FakeDNS, generate, refunds, wait_status

FULL = (5_000_000, 5_000_000)        # a refunded account: balance = Σ ledger = the funding
CHARGED = (4_980_000, 4_980_000)     # one /generate paid for


async def _downloads(sim: Sim, part: str = "/files/") -> list[dict[str, Any]]:
    return [d for d in await sim.op("downloads") if part in d["path"]]


async def _settled(client: httpx.AsyncClient, acct: Account, job: str, timeout: float = 15) -> dict[str, Any]:
    body = await wait_status(client, acct, job, timeout=timeout)
    await asyncio.sleep(1.0)  # long enough for a looping poll chain to show itself (polls every 0.3 s)
    return body


async def test_unencodable_output_fails_once_and_is_refunded(
        client: httpx.AsyncClient, replicate_account: Account, sim: Sim, media_workers: Any, app: Any) -> None:
    # 300 levels: past orjson's limit (~255); a file URL at the bottom that must not be fetched.
    job = await generate(client, replicate_account, "owner/model", {"sim": {"output": "deep", "depth": 300}})
    body = await _settled(client, replicate_account, job)
    assert body["replicate_status"] == "failed" and "nested more than 64 levels" in body["error"], body
    assert await _downloads(sim) == []  # refused before re-hosting: nothing copied
    assert await refunds(app, job) == 1
    assert await audit(app, replicate_account.uid) == FULL


async def test_rehosting_is_not_started_a_third_time(
        client: httpx.AsyncClient, replicate_account: Account, sim: Sim, app: Any, fast_polls: Any) -> None:
    from jobs import keys
    from tests.fixtures.workers import start_inprocess_worker, stop_inprocess_worker

    job = await generate(client, replicate_account, "owner/model", {"sim": {"seconds": 0.2}})
    # As if two runs had started copying this output and died (worker killed, lock expired).
    await app.state.sn.redis.set(keys.rehost_runs(job), 2)
    workers = [await start_inprocess_worker("media"), await start_inprocess_worker("poll")]
    try:
        body = await _settled(client, replicate_account, job)
    finally:
        for w in reversed(workers):
            await stop_inprocess_worker(*w)
    assert body["replicate_status"] == "failed" and "interrupted more than once" in body["error"], body
    assert await _downloads(sim) == []
    assert await refunds(app, job) == 1
    assert await audit(app, replicate_account.uid) == FULL


async def test_output_past_the_parsers_limits_fails_at_once(
        client: httpx.AsyncClient, replicate_account: Account, sim: Sim, media_workers: Any, app: Any) -> None:
    # The poll cannot even read the prediction: it must not re-read it every few seconds for 30 min.
    job = await generate(client, replicate_account, "owner/model", {"sim": {"output": "unreadable"}})
    body = await _settled(client, replicate_account, job)
    assert body["replicate_status"] == "failed" and "cannot be read" in body["error"], body
    assert await refunds(app, job) == 1
    gets = (await sim.op("stats"))["gets"]
    await asyncio.sleep(1.0)
    assert (await sim.op("stats"))["gets"] == gets  # the chain ended
    assert await audit(app, replicate_account.uid) == FULL


@pytest.mark.parametrize("kind", ["bigint", "surrogate"])
async def test_big_ints_and_lone_surrogates_are_normalised_and_copied_once(
        client: httpx.AsyncClient, replicate_account: Account, sim: Sim, media_workers: Any, app: Any,
        kind: str) -> None:
    job = await generate(client, replicate_account, "owner/model", {"sim": {"output": kind}})
    body = await _settled(client, replicate_account, job)
    assert body["replicate_status"] == "completed", body
    hosted = f"http://gateway.test/files/{job}/0.png"
    if kind == "bigint":
        assert body["output"] == {"seed": str(2**70), "image": hosted}
    else:
        assert body["output"] == {"caption": "bad \ufffd text", "\ufffdkey": hosted}
    assert len(await _downloads(sim)) == 1
    assert await refunds(app, job) == 0
    assert await audit(app, replicate_account.uid) == CHARGED


async def test_ten_thousand_file_urls_stop_at_the_cap(
        client: httpx.AsyncClient, replicate_account: Account, sim: Sim, media_workers: Any, app: Any) -> None:
    job = await generate(client, replicate_account, "owner/model", {"sim": {"output": "many", "count": 10_000}})
    body = await _settled(client, replicate_account, job)
    assert body["replicate_status"] == "failed", body
    assert "10000 files; at most 100" in body["error"] and "SYNCNODE_HOSTING_MAX_FILES" in body["error"]
    assert await _downloads(sim) == []  # counted before any download
    assert await refunds(app, job) == 1
    assert await audit(app, replicate_account.uid) == FULL


async def test_total_bytes_stop_at_the_cap(
        client: httpx.AsyncClient, replicate_account: Account, sim: Sim, media_workers: Any, app: Any,
        monkeypatch: pytest.MonkeyPatch) -> None:
    s = app.state.sn.settings
    monkeypatch.setattr(s, "hosting_max_total_bytes", 1 << 20)
    # 8 × 512 KiB streamed without a length: the third file passes the 1 MiB total mid-stream.
    job = await generate(client, replicate_account, "owner/model",
                         {"sim": {"output": "sized", "count": 8, "size": 512 << 10}})
    body = await _settled(client, replicate_account, job)
    assert body["replicate_status"] == "failed", body
    assert "total more than 1048576 bytes" in body["error"]
    assert len(await _downloads(sim)) == 3  # two whole, the third cut off; no second attempt
    assert (await sim.op("stats"))["file_bytes"] <= (1 << 20) + (1 << 20)
    assert not (s.data_dir / "files" / job).exists() or not any((s.data_dir / "files" / job).iterdir())
    assert await refunds(app, job) == 1
    assert await audit(app, replicate_account.uid) == FULL


async def test_two_gib_declared_stops_before_reading(
        client: httpx.AsyncClient, replicate_account: Account, sim: Sim, media_workers: Any, app: Any,
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(app.state.sn.settings, "hosting_max_total_bytes", 100 << 20)
    # 8 × 256 MiB = 2 GiB, each declared in Content-Length: refused on the first file's headers.
    job = await generate(client, replicate_account, "owner/model",
                         {"sim": {"output": "declared", "count": 8, "size": 256 << 20}})
    body = await _settled(client, replicate_account, job)
    assert body["replicate_status"] == "failed" and "total more than" in body["error"], body
    assert len(await _downloads(sim)) == 1
    assert (await sim.op("stats"))["file_bytes"] < 16 << 20  # what sat in socket buffers at most
    assert await refunds(app, job) == 1
    assert await audit(app, replicate_account.uid) == FULL


def _assert_passive(r: httpx.Response) -> None:
    assert r.status_code == 200
    assert r.headers["content-type"] == "application/octet-stream"
    assert r.headers["content-disposition"].startswith("attachment")
    assert "sandbox" in r.headers["content-security-policy"]
    assert "default-src 'none'" in r.headers["content-security-policy"]
    assert r.headers["x-content-type-options"] == "nosniff"


@pytest.mark.parametrize("kind", ["svg_data", "svg_file"])
async def test_svg_output_is_never_served_as_an_active_type(
        client: httpx.AsyncClient, replicate_account: Account, sim: Sim, media_workers: Any, app: Any,
        kind: str) -> None:
    from tests.fakes.replicate_files import SVG

    job = await generate(client, replicate_account, "owner/model", {"sim": {"output": kind}})
    body = await wait_status(client, replicate_account, job)
    assert body["replicate_status"] == "completed", body
    assert body["output"] == f"http://gateway.test/files/{job}/0.bin"  # no name a CDN types as SVG
    r = await client.get(f"/files/{job}/0.bin")
    _assert_passive(r)
    assert r.content == SVG


async def test_files_route_types_from_the_allow_list_not_the_name(client: httpx.AsyncClient, app: Any) -> None:
    from tests.fakes.replicate_files import PNG, SVG

    root = app.state.sn.settings.data_dir / "files" / "legacy-job"
    root.mkdir(parents=True, exist_ok=True)
    (root / "0.svg").write_bytes(SVG)  # written before this fix, or by hand: the name says SVG
    (root / "1.html").write_bytes(b"<script>alert(1)</script>")
    (root / "2.png").write_bytes(PNG)
    _assert_passive(await client.get("/files/legacy-job/0.svg"))
    _assert_passive(await client.get("/files/legacy-job/1.html"))
    r = await client.get("/files/legacy-job/2.png")
    assert r.headers["content-type"] == "image/png" and "content-disposition" not in r.headers
    assert "sandbox" in r.headers["content-security-policy"] and r.headers["x-content-type-options"] == "nosniff"


async def test_svg_on_s3_and_bunny_is_stored_passive(
        client: httpx.AsyncClient, replicate_account: Account, sim: Sim, media_workers: Any,
        moto_url: str, bunny_url: str, allow_local: Any) -> None:
    allow_local(moto_url)
    allow_local(bunny_url)
    s3 = boto3.client("s3", endpoint_url=moto_url, region_name="us-east-1", aws_access_key_id="AKIDTEST",
                      aws_secret_access_key="moto-secret-key-123")
    s3.create_bucket(Bucket="sn-passive")
    h = replicate_account.headers
    r = await client.post("/storage", headers=h, json={
        "provider": "s3", "bucket": "sn-passive", "endpoint_url": moto_url, "access_key_id": "AKIDTEST",
        "secret_access_key": "moto-secret-key-123", "public_base_url": "https://cdn.example.com"})
    assert r.status_code == 200, r.text
    job = await generate(client, replicate_account, "owner/model", {"sim": {"output": "svg_file"}})
    assert (await wait_status(client, replicate_account, job))["output"] == f"https://cdn.example.com/{job}/0.bin"
    obj = s3.get_object(Bucket="sn-passive", Key=f"{job}/0.bin")
    assert obj["ContentType"] == "application/octet-stream" and obj["ContentDisposition"] == "attachment"

    r = await client.post("/storage", headers=h, json={
        "provider": "bunny", "storage_zone": "sn-zone", "access_key": "bunny-zone-password",
        "region_host": bunny_url, "pull_zone_url": "https://sn.b-cdn.net"})
    assert r.status_code == 200, r.text
    job = await generate(client, replicate_account, "owner/model", {"sim": {"output": "svg_data"}})
    assert (await wait_status(client, replicate_account, job))["output"] == f"https://sn.b-cdn.net/{job}/0.bin"
    assert bunny.FILES[f"sn-zone/{job}/0.bin"][1] == "application/octet-stream"


async def test_deadline_race_ends_delivered_or_refunded_never_both(
        client: httpx.AsyncClient, replicate_account: Account, sim: Sim, media_workers: Any, app: Any,
        monkeypatch: pytest.MonkeyPatch) -> None:
    from jobs import keys
    from workers.poll import finalize

    s = app.state.sn.settings
    monkeypatch.setattr(s, "prediction_deadline_seconds", 2)
    job = await generate(client, replicate_account, "owner/model", {"sim": {"seconds": 1.0}})
    # As if a webhook run had started re-hosting the success: it holds the finishing lock.
    assert await app.state.sn.redis.set(keys.finishing(job), "1", nx=True, ex=60)
    await asyncio.sleep(3.5)  # the deadline passes; the chain's links keep polling past it
    r = await client.get("/prediction-status", params={"job_id": job}, headers=replicate_account.headers)
    assert r.json()["replicate_status"] == "in_progress", r.json()  # not refunded under the copy
    assert await refunds(app, job) == 0
    # The lock holder finishes: delivered and paid for.
    (pred,) = (await sim.predictions()).values()
    assert pred["status"] == "succeeded"
    key = replicate_sim.key_of(pred["id"])
    assert await finalize(media_workers[1].ctx["sn"], job, replicate_account.uid, pred, key) == "completed"
    await app.state.sn.redis.delete(keys.finishing(job))
    body = await _settled(client, replicate_account, job)
    assert body["replicate_status"] == "completed" and body["output"] == f"http://gateway.test/files/{job}/0.png"
    assert await refunds(app, job) == 0
    assert await audit(app, replicate_account.uid) == CHARGED


async def test_replicate_key_never_goes_to_the_cdn_or_over_http(
        client: httpx.AsyncClient, replicate_account: Account, sim: Sim, media_workers: Any, app: Any,
        monkeypatch: pytest.MonkeyPatch) -> None:
    loop = asyncio.get_running_loop()
    monkeypatch.setattr(loop, "getaddrinfo", FakeDNS(loop, {"files.replicate.delivery": ["127.0.0.1"]}).getaddrinfo)
    port = sim.url.rsplit(":", 1)[1]
    monkeypatch.setattr(app.state.sn.settings, "fetch_allow", f"files.replicate.delivery:{port}")
    job = await generate(client, replicate_account, "owner/model", {"sim": {"output": "delivery"}})
    body = await wait_status(client, replicate_account, job)
    assert body["replicate_status"] == "completed" and "hosting_error" not in body, body
    (got,) = await _downloads(sim, "/delivery/")
    assert got["authorization"] is None  # replicate.delivery, over plain http: never the key
    # The configured API origin (operator configuration) still gets it: its files need it.
    job = await generate(client, replicate_account, "owner/model", {"sim": {"output": "file"}})
    assert (await wait_status(client, replicate_account, job))["replicate_status"] == "completed"
    (api,) = await _downloads(sim, "/files/")
    assert api["authorization"] == f"Bearer {replicate_sim.key_of(api['path'].split('/')[2])}"


def test_key_origin_is_https_api_replicate_com_by_default() -> None:
    from jobs.settings import Settings
    from workers.hosting import key_origin

    ours = key_origin(Settings(replicate_base_url="https://api.replicate.com/v1"))
    assert ours("https://api.replicate.com/v1/files/abc/download")
    for url in ("http://api.replicate.com/v1/files/abc", "https://replicate.delivery/pbxt/out.png",
                "https://api.replicate.com:8443/v1/files/abc", "https://files.replicate.delivery/x.png",
                "https://api.replicate.com.evil.example/x", "https://[::1/x"):
        assert not ours(url), url


async def test_chat_output_is_normalised_or_refused_without_hurting_its_batch(
        client: httpx.AsyncClient, funded: Account, chat_worker: Any, app: Any) -> None:
    models = ["hostile-output", "deep-output", "m", "m"]
    rs = await asyncio.gather(*(client.post(CHAT, headers=funded.headers, json={"model": m, "prompt": "p"})
                                for m in models))
    hostile, deep, *fine = rs
    assert hostile.status_code == 200, hostile.text
    pred = hostile.json()["prediction"]["output"]
    assert pred["choices"][0]["message"]["content"] == "bad \ufffd text" and pred["usage"]["seed"] == str(2**70)
    assert deep.status_code >= 500 and "nested more than 64 levels" in deep.json()["error"], deep.text
    assert [r.status_code for r in fine] == [200, 200]
    assert await audit(app, funded.uid) == (4_940_000, 4_940_000)  # three paid, the refused one refunded
