"""GET/POST /storage and re-hosting on S3 (a real moto server), Bunny (fake Storage API), local."""

from __future__ import annotations

from typing import Any

import asyncpg
import boto3
import httpx
import pytest

from tests.fakes import bunny
from tests.fakes.replicate_files import PNG
from tests.fixtures.accounts import Account, audit
from tests.fixtures.media import Sim
from tests.helpers import generate, wait_status


def _s3(moto_url: str) -> Any:
    return boto3.client("s3", endpoint_url=moto_url, region_name="us-east-1", aws_access_key_id="AKIDTEST",
                        aws_secret_access_key="moto-secret-key-123")


async def test_s3_round_trip(client: httpx.AsyncClient, replicate_account: Account, sim: Sim,
                             media_workers: Any, moto_url: str, allow_local: Any) -> None:
    allow_local(moto_url)
    _s3(moto_url).create_bucket(Bucket="sn-outputs")
    h = replicate_account.headers
    assert (await client.get("/storage", headers=h)).json() == {"provider": "default"}
    cfg = {"provider": "s3", "bucket": "sn-outputs", "region": "us-east-1", "endpoint_url": moto_url,
           "access_key_id": "AKIDTEST", "secret_access_key": "moto-secret-key-123",
           "public_base_url": "https://cdn.example.com"}
    r = await client.post("/storage", headers=h, json=cfg)
    assert r.status_code == 200, r.text
    got = (await client.get("/storage", headers=h)).json()
    assert got["bucket"] == "sn-outputs" and got["secret_access_key"] != "moto-secret-key-123"
    assert "moto-secret-key-123" not in (await client.get("/storage", headers=h)).text
    job = await generate(client, replicate_account, "owner/model", {"sim": {"output": "files"}})
    body = await wait_status(client, replicate_account, job)
    assert body["replicate_status"] == "completed" and "hosting_error" not in body
    assert body["output"] == [f"https://cdn.example.com/{job}/0.png", f"https://cdn.example.com/{job}/1.png"]
    obj = _s3(moto_url).get_object(Bucket="sn-outputs", Key=f"{job}/1.png")
    assert obj["Body"].read() == PNG + b"out-1.png"
    assert obj["ContentType"] == "image/png"
    # The save-time check cleaned up after itself.
    keys = [o["Key"] for o in _s3(moto_url).list_objects_v2(Bucket="sn-outputs").get("Contents", [])]
    assert not any(k.startswith(".syncnode-check/") for k in keys)


async def test_s3_bad_credentials_not_saved(client: httpx.AsyncClient, replicate_account: Account,
                                            moto_url: str, allow_local: Any) -> None:
    allow_local(moto_url)
    r = await client.post("/storage", headers=replicate_account.headers, json={
        "provider": "s3", "bucket": "no-such-bucket-here", "endpoint_url": moto_url,
        "access_key_id": "AKIDTEST", "secret_access_key": "x"})
    assert r.status_code == 400 and "Storage check failed" in r.json()["error"]
    assert (await client.get("/storage", headers=replicate_account.headers)).json() == {"provider": "default"}


async def test_private_endpoint_refused(client: httpx.AsyncClient, replicate_account: Account) -> None:
    r = await client.post("/storage", headers=replicate_account.headers, json={
        "provider": "s3", "bucket": "abc", "endpoint_url": "http://127.0.0.1:9/",
        "access_key_id": "a", "secret_access_key": "b"})
    assert r.status_code == 400 and "private address" in r.json()["error"]


async def test_bunny_round_trip(client: httpx.AsyncClient, replicate_account: Account, sim: Sim,
                                media_workers: Any, bunny_url: str, allow_local: Any) -> None:
    allow_local(bunny_url)
    h = replicate_account.headers
    base = {"provider": "bunny", "storage_zone": "sn-zone", "region_host": bunny_url,
            "pull_zone_url": "https://sn.b-cdn.net"}
    r = await client.post("/storage", headers=h, json={**base, "access_key": "wrong"})
    assert r.status_code == 400 and "access key" in r.json()["error"]
    r = await client.post("/storage", headers=h, json={**base, "access_key": "bunny-zone-password"})
    assert r.status_code == 200, r.text
    assert r.json()["access_key"] != "bunny-zone-password"
    job = await generate(client, replicate_account, "owner/model", {"sim": {"output": "file"}})
    body = await wait_status(client, replicate_account, job)
    assert body["output"] == f"https://sn.b-cdn.net/{job}/0.png"
    data, ctype = bunny.FILES[f"sn-zone/{job}/0.png"]
    assert data == PNG + b"out-0.png" and ctype == "image/png"


async def test_hosting_failure_keeps_provider_urls(client: httpx.AsyncClient, replicate_account: Account,
                                                   sim: Sim, media_workers: Any, app: Any) -> None:
    job = await generate(client, replicate_account, "owner/model", {"sim": {"output": "broken"}})
    body = await wait_status(client, replicate_account, job)
    assert body["replicate_status"] == "completed"
    assert body["output"].startswith(sim.url + "/files/") and "HTTP 500" in body["hosting_error"]
    assert await audit(app, replicate_account.uid) == (4_980_000, 4_980_000)  # the work was done


async def test_size_cap(client: httpx.AsyncClient, replicate_account: Account, sim: Sim,
                        media_workers: Any, app: Any, monkeypatch: Any) -> None:
    monkeypatch.setattr(app.state.sn.settings, "hosting_max_bytes", 1 << 20)
    job = await generate(client, replicate_account, "owner/model", {"sim": {"output": "big"}})
    body = await wait_status(client, replicate_account, job)
    assert "larger than 1048576 bytes" in body["hosting_error"]


async def test_postgres_lost_while_completing_a_rehosted_output_completes_it_once(
        client: httpx.AsyncClient, replicate_account: Account, sim: Sim, media_workers: Any, app: Any,
        moto_url: str, allow_local: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """The files reached the user's bucket, then the write that completes the task lost Postgres.
    The task is still delivered (completed, charged once, not refunded for work that was done),
    with the output naming the files in the bucket and nothing else left there."""
    import workers.poll as poll_mod
    from storage.predictions import PredictionRepository
    from workers import hosting

    allow_local(moto_url)
    _s3(moto_url).create_bucket(Bucket="sn-lost-pg")
    r = await client.post("/storage", headers=replicate_account.headers, json={
        "provider": "s3", "bucket": "sn-lost-pg", "region": "us-east-1", "endpoint_url": moto_url,
        "access_key_id": "AKIDTEST", "secret_access_key": "moto-secret-key-123",
        "public_base_url": "https://cdn.example.com"})
    assert r.status_code == 200, r.text
    real_rehost, real_complete = hosting.rehost, PredictionRepository.complete
    rehosts: list[str] = []
    completes: list[str] = []

    async def counted_rehost(w: Any, uid: str, job_id: str, *a: Any) -> Any:
        rehosts.append(job_id)
        return await real_rehost(w, uid, job_id, *a)

    async def complete_once_lost(self: PredictionRepository, job_id: str, *a: Any) -> Any:
        completes.append(job_id)
        if len(completes) == 1:
            raise asyncpg.exceptions.ConnectionDoesNotExistError("connection was closed in the middle of operation")
        return await real_complete(self, job_id, *a)

    monkeypatch.setattr(poll_mod, "rehost", counted_rehost)
    monkeypatch.setattr(PredictionRepository, "complete", complete_once_lost)
    job = await generate(client, replicate_account, "owner/model", {"sim": {"output": "files"}})
    body = await wait_status(client, replicate_account, job)
    assert body["replicate_status"] == "completed", body
    assert body["output"] == [f"https://cdn.example.com/{job}/0.png", f"https://cdn.example.com/{job}/1.png"]
    assert len(completes) == 2 and rehosts == [job]  # stored by the next link, not copied again
    stored = [o["Key"] for o in _s3(moto_url).list_objects_v2(Bucket="sn-lost-pg").get("Contents", [])]
    assert sorted(k for k in stored if not k.startswith(".syncnode-check/")) == [f"{job}/0.png", f"{job}/1.png"]
    assert await audit(app, replicate_account.uid) == (4_980_000, 4_980_000)
