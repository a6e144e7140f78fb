"""Nothing costly for a caller who has not shown a credential and, on paid routes, a balance that
covers the call (issue 7, class 1); and the parsers at the edges (class 4). Each test measures
what an attacker would: bytes read, Redis memory, CPU time, decodes run, free waits held."""

from __future__ import annotations

import asyncio
import base64
import io
import os
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import psutil
import pytest
from PIL import Image, ImageFile

from storage.egress import FetchRefused, guarded_aiohttp_client
from tests.fixtures.accounts import Account, MakeAccount, audit

BIG = 15 << 20
CHUNK = 64 << 10


class CountingBody:
    """A 15 MiB request body that counts how much of it the server pulled."""

    def __init__(self, size: int = BIG) -> None:
        self.size = size
        self.chunks_read = 0

    async def __aiter__(self) -> AsyncIterator[bytes]:
        sent = 0
        while sent < self.size:
            self.chunks_read += 1
            sent += CHUNK
            yield b"{" if sent == CHUNK else b" " * CHUNK


def noise_png(side: int = 256) -> bytes:
    out = io.BytesIO()
    Image.frombytes("RGB", (side, side), os.urandom(side * side * 3)).save(out, format="PNG")
    return out.getvalue()


def bomb_png(side: int = 7000) -> bytes:
    """A ~50 KB PNG that declares 49 M pixels: a second of CPU and ~200 MiB if decoded."""
    out = io.BytesIO()
    Image.new("1", (side, side)).save(out, format="PNG", optimize=True)
    return out.getvalue()


@pytest.mark.parametrize("path", ["/generate", "/face-swap/run", "/moderate", "/", "/chat-completion"])
@pytest.mark.parametrize("auth", [None, "Bearer sn_not_a_real_key", "Basic abc"])
async def test_15_mib_body_without_a_valid_credential_is_401_after_the_headers(
        path: str, auth: str | None, client: httpx.AsyncClient) -> None:
    body = CountingBody()
    headers = {"content-type": "application/json", "content-length": str(BIG)}
    if auth:
        headers["authorization"] = auth
    r = await client.post(path, headers=headers, content=body)
    assert r.status_code == 401, r.text
    assert body.chunks_read == 0, f"{path} read {body.chunks_read} chunks before refusing"


async def test_replicate_webhook_reads_no_body_for_an_unknown_job(client: httpx.AsyncClient) -> None:
    for headers in ({}, {"webhook-id": "msg_1", "webhook-timestamp": str(int(time.time())),
                         "webhook-signature": "v1,AAAA"}):
        body = CountingBody(1 << 20)
        r = await client.post(f"/webhooks/replicate?job_id={uuid.uuid4()}", headers=headers, content=body)
        assert r.status_code == 401, r.text
        assert body.chunks_read == 0


async def _redis_memory(app: Any) -> int:
    info = await app.state.sn.redis.info("memory")
    return int(info["used_memory"])


async def test_zero_balance_moderation_pins_no_redis_memory(client: httpx.AsyncClient, make_account: MakeAccount,
                                                             app: Any) -> None:
    acct = await make_account(balance="0")
    images = [base64.b64encode(noise_png()).decode() for _ in range(50)]  # ~200 KB each, all different
    redis = app.state.sn.redis
    # Blobs of earlier tests' paid checks live out their TTL: only new ones would be this test's.
    kept = {k async for k in redis.scan_iter(match="syncnode:blob:*")}
    before = await _redis_memory(app)
    for img in images:
        r = await client.post("/moderate", headers=acct.headers, json={"imageBase64": img})
        assert r.status_code == 402, r.text
    after = await _redis_memory(app)
    assert {k async for k in redis.scan_iter(match="syncnode:blob:*")} - kept == set()
    assert after - before < 1 << 20, f"Redis grew by {after - before} bytes for 50 unpaid calls"
    assert await audit(app, acct.uid) == (0, 0)


async def test_zero_balance_moderation_fetches_nothing(client: httpx.AsyncClient, make_account: MakeAccount,
                                                       allow_image_server: Any) -> None:
    acct = await make_account(balance="0")
    server = allow_image_server
    before = len(server.hits)
    r = await client.post("/moderate", headers=acct.headers,
                          json={"imageUrl": f"http://127.0.0.1:{server.port}/img.png"})
    assert r.status_code == 402, r.text
    assert len(server.hits) == before


class DecodeSpy:
    """Counts decodes: in this process (Pillow) and in decoder child processes."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        import ingress.image_input as image_input

        self.calls = 0
        real_load, real_child = ImageFile.ImageFile.load, image_input._decode_in_child

        def load(im: ImageFile.ImageFile) -> Any:
            self.calls += 1
            return real_load(im)

        async def child(*args: Any) -> Any:
            self.calls += 1
            return await real_child(*args)

        monkeypatch.setattr(ImageFile.ImageFile, "load", load)
        monkeypatch.setattr(image_input, "_decode_in_child", child)


@pytest.mark.parametrize("route", ["face-swap", "moderate"])
async def test_decompression_bomb_is_refused_from_its_header(
        route: str, client: httpx.AsyncClient, make_account: MakeAccount, app: Any,
        monkeypatch: pytest.MonkeyPatch) -> None:
    acct = await make_account(keys={"replicate_key": "r8_bomb"})
    bomb = base64.b64encode(bomb_png()).decode()
    small = base64.b64encode(noise_png(8)).decode()
    body: dict[str, Any]
    if route == "face-swap":
        path, body = "/face-swap/run", {"input": {"source_image": small, "target_image": bomb}}
    else:
        path, body = "/moderate", {"imageBase64": bomb}
    await client.post(path, headers=acct.headers, json={})  # warm the credential cache and the route
    spy = DecodeSpy(monkeypatch)
    proc = psutil.Process()
    rss = proc.memory_info().rss
    start = time.perf_counter()
    r = await client.post(path, headers=acct.headers, json=body)
    elapsed = time.perf_counter() - start
    grown = proc.memory_info().rss - rss
    assert r.status_code == 400 and "pixels" in r.json()["error"], r.text
    assert spy.calls == 0  # not the bomb, nor (face swap) its partner
    assert elapsed < 0.05, f"refused after {elapsed * 1000:.0f} ms"
    assert grown < 32 << 20, f"the ingress grew by {grown >> 20} MiB"
    assert await audit(app, acct.uid) == (5_000_000, 5_000_000)


async def test_images_are_not_decoded_for_a_caller_who_cannot_pay(
        client: httpx.AsyncClient, make_account: MakeAccount, monkeypatch: pytest.MonkeyPatch) -> None:
    broke = await make_account(balance="0.01", keys={"replicate_key": "r8_broke"})
    keyless = await make_account()
    img = base64.b64encode(noise_png(64)).decode()
    spy = DecodeSpy(monkeypatch)
    body = {"input": {"source_image": img, "target_image": img}}
    r = await client.post("/face-swap/run", headers=broke.headers, json=body)
    assert r.status_code == 402, r.text
    r = await client.post("/face-swap/run", headers=keyless.headers, json=body)
    assert r.status_code == 400 and "replicate_key" in r.json()["error"], r.text
    assert spy.calls == 0


async def test_replays_waiting_on_a_running_task_are_bounded(
        client: httpx.AsyncClient, funded: Account, chat_worker: Any, app: Any,
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(app.state.sn.settings, "idempotent_replay_waiters", 3)
    headers = {**funded.headers, "Idempotency-Key": str(uuid.uuid4())}
    body = {"model": "slow-1.5", "prompt": f"replay bound {uuid.uuid4()}"}
    first = asyncio.create_task(client.post("/chat-completion", headers=headers, json=body))
    await asyncio.sleep(0.3)  # the first request has charged and is waiting on the worker
    replays = [asyncio.create_task(client.post("/chat-completion", headers=headers, json=body)) for _ in range(15)]
    done, _ = await asyncio.wait(replays, timeout=0.5)
    refused = [t.result() for t in done]
    assert len(refused) == 12 and all(r.status_code == 409 for r in refused), [r.text for r in refused]
    assert all(r.json()["job_id"] and "get" in r.json() for r in refused)
    waited = await asyncio.gather(first, *[t for t in replays if t not in done])
    assert [r.status_code for r in waited] == [200] * 4
    assert await audit(app, funded.uid) == (4_980_000, 4_980_000)


@pytest.mark.parametrize("model", ["owner/name\n", "owner/name:" + "a" * 64 + "\n", "a" * 64 + "\n",
                                   "owner/n\u00e4me", "\u0661wner/name"])
async def test_model_names_are_matched_whole_and_ascii(model: str, client: httpx.AsyncClient,
                                                        make_account: MakeAccount, app: Any) -> None:
    acct = await make_account(keys={"replicate_key": "r8_model"})
    r = await client.post("/generate", headers=acct.headers, json={"model": model, "input": {"prompt": "x"}})
    assert r.status_code == 400 and "Invalid model" in r.json()["error"], r.text
    assert await audit(app, acct.uid) == (5_000_000, 5_000_000)


# Four dotted parts with a leading zero (0177.0.0.1) never get this far: httpx refuses the URL.
NON_CANONICAL = ["127.1", "2130706433", "017700000001", "0x7f.0.0.1", "0x7f000001", "127.0.0.1.", "134744072",
                 "8.8.2056"]


@pytest.mark.parametrize("host", NON_CANONICAL)
async def test_non_canonical_ip_literals_are_refused_before_resolving(host: str) -> None:
    asked: list[str] = []

    async def resolver(name: str, port: int) -> list[str]:
        asked.append(name)
        return ["93.184.215.14"]

    client = guarded_aiohttp_client(frozenset(), connect_timeout=1, read_timeout=1, max_connections=1,
                                    resolver=resolver)
    try:
        with pytest.raises(FetchRefused, match="non-canonical"):
            await client.get(f"http://{host}:8080/x")
    finally:
        await client.aclose()
    assert asked == []


async def test_metrics_need_the_token_when_one_is_set(client: httpx.AsyncClient, app: Any,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    from pydantic import SecretStr

    assert (await client.get("/metrics")).status_code == 200
    monkeypatch.setattr(app.state.sn.settings, "metrics_token", SecretStr("scrape-me"))
    assert (await client.get("/metrics")).status_code == 401
    assert (await client.get("/metrics", headers={"Authorization": "Bearer wrong"})).status_code == 401
    r = await client.get("/metrics", headers={"Authorization": "Bearer scrape-me"})
    assert r.status_code == 200 and "syncnode_http_requests" in r.text
    assert (await client.get("/healthz")).status_code == 200


async def test_a_reused_idempotency_key_buys_no_work(client: httpx.AsyncClient, make_account: MakeAccount,
                                                      allow_image_server: Any, moderation_worker: Any,
                                                      monkeypatch: pytest.MonkeyPatch, app: Any) -> None:
    acct = await make_account(balance="0.01")
    key = {"Idempotency-Key": str(uuid.uuid4())}
    r = await client.post("/moderate", headers={**acct.headers, **key}, json={"text": "hello there"})
    assert r.status_code == 200, r.text  # paid once; the balance is now $0
    spy = DecodeSpy(monkeypatch)
    before = len(allow_image_server.hits)
    url = f"http://127.0.0.1:{allow_image_server.port}/img.png"
    for path, body in (("/moderate", {"imageUrl": url}),
                       ("/face-swap/run", {"input": {"source_image": "aGk=", "target_image": "aGk="}})):
        r = await client.post(path, headers={**acct.headers, **key}, json=body)
        assert r.status_code == 409, r.text
    assert len(allow_image_server.hits) == before and spy.calls == 0
    assert await audit(app, acct.uid) == (0, 0)


async def test_concurrent_image_checks_are_capped_by_what_the_balance_pays(
        client: httpx.AsyncClient, make_account: MakeAccount, allow_image_server: Any, app: Any) -> None:
    acct = await make_account(balance="0.01")  # one moderation call
    url = f"http://127.0.0.1:{allow_image_server.port}/img.png"
    before = len(allow_image_server.hits)
    rs = await asyncio.gather(*(client.post("/moderate", headers=acct.headers, json={"imageUrl": url},
                                            params={"n": str(i)}) for i in range(30)))
    codes = sorted(r.status_code for r in rs)
    assert codes.count(429) >= 25, codes
    assert len(allow_image_server.hits) - before <= 5


async def test_zero_balance_generate_body_is_not_read(client: httpx.AsyncClient, make_account: MakeAccount) -> None:
    acct = await make_account(balance="0", keys={"replicate_key": "r8_zero"})
    for path in ("/generate", "/face-swap/run", "/moderate"):
        body = CountingBody()
        r = await client.post(path, headers={**acct.headers, "content-length": str(BIG)}, content=body)
        assert r.status_code == 402, r.text
        assert body.chunks_read == 0


def gif_with_comment(size: int) -> bytes:
    out = io.BytesIO()
    Image.new("P", (1, 1)).save(out, format="GIF")
    gif = out.getvalue()
    blocks = b"".join(bytes([255]) + b"x" * 255 for _ in range(size // 256))
    return gif[:13 + 6] + b"\x21\xfe" + blocks + b"\x00" + gif[13 + 6:]


def progressive_jpeg_with_scans(scans: int) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (64, 64)).save(out, format="JPEG", progressive=True)
    jpeg = out.getvalue()
    sos = jpeg.index(b"\xff\xda")
    return jpeg[:sos] + jpeg[sos:-2] * 1 + b"\xff\xda\x00\x08\x01\x01\x00\x00\x3f\x00" * scans + b"\xff\xd9"


@pytest.mark.parametrize("image", ["gif-comment", "jpeg-scans"])
async def test_crafted_metadata_never_reaches_pillow(image: str, client: httpx.AsyncClient,
                                                     make_account: MakeAccount, monkeypatch: pytest.MonkeyPatch,
                                                     app: Any) -> None:
    acct = await make_account()
    data = gif_with_comment(3 << 20) if image == "gif-comment" else progressive_jpeg_with_scans(4000)
    spy = DecodeSpy(monkeypatch)
    r = await client.post("/moderate", headers=acct.headers, json={"imageBase64": base64.b64encode(data).decode()})
    assert r.status_code == 400, r.text
    assert spy.calls == 0
    assert await audit(app, acct.uid) == (5_000_000, 5_000_000)


async def test_an_empty_metrics_token_is_unset(client: httpx.AsyncClient, app: Any,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    from pydantic import SecretStr

    monkeypatch.setattr(app.state.sn.settings, "metrics_token", SecretStr(""))
    assert (await client.get("/metrics")).status_code == 200


async def test_zero_balance_small_generate_is_refused_by_the_charge(
        client: httpx.AsyncClient, make_account: MakeAccount, app: Any) -> None:
    # A body no larger than a chat call's skips the early look-up; the charge still refuses it.
    acct = await make_account(balance="0", keys={"replicate_key": "r8_zero"})
    r = await client.post("/generate", headers=acct.headers, json={"model": "a/b", "input": {"prompt": "x"}})
    assert r.status_code == 402, r.text
    assert "Insufficient balance" in r.json()["error"]
    assert await audit(app, acct.uid) == (0, 0)
    bare = await make_account(keys={})
    r = await client.post("/generate", headers=bare.headers, json={"model": "a/b", "input": {"prompt": "x"}})
    assert r.status_code == 400 and "replicate" in r.json()["error"].lower(), r.text
