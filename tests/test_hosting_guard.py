"""Re-hosting and storage endpoints behind the SSRF guard; what re-hosting copies; its limits.

Names resolve through a fake resolver patched onto the event loop (the one every client
here resolves through: the guard, aiohttp, anyio), answering 127.0.0.1 for made-up names, so
a loopback server stands for "somewhere inside our network" and records every request it
gets. No test sends traffic outside 127.0.0.0/8.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response, StreamingResponse
from starlette.routing import Route

from tests.fakes import bunny
from tests.fakes.replicate_files import PNG
from tests.fixtures.accounts import Account
from tests.fixtures.servers import ServerThread
from tests.helpers import FakeDNS

HITS: list[str] = []


async def _file(request: Request) -> Response:
    name = request.path_params["name"]
    HITS.append(name)
    if name == "slow.bin":
        async def trickle() -> AsyncIterator[bytes]:
            for _ in range(600):  # a byte every 0.1 s: no read ever times out, the whole never ends
                yield b"\x00"
                await asyncio.sleep(0.1)
        return StreamingResponse(trickle(), media_type="application/octet-stream")
    return Response(PNG + name.encode(), media_type="application/octet-stream")


async def _redirect(request: Request) -> Response:
    return RedirectResponse(request.query_params["to"], status_code=302)


@pytest.fixture(scope="module")
def inside() -> Iterator[ServerThread]:
    """A server inside our network: nothing the guard refuses may reach it."""
    srv = ServerThread(Starlette(routes=[Route("/f/{name}", _file), Route("/r", _redirect)]))
    srv.start()
    yield srv
    srv.stop()


@pytest.fixture
def dns(monkeypatch: pytest.MonkeyPatch) -> Any:
    def install(answers: dict[str, list[str]]) -> FakeDNS:
        loop = asyncio.get_running_loop()
        fake = FakeDNS(loop, answers)
        monkeypatch.setattr(loop, "getaddrinfo", fake.getaddrinfo)
        return fake
    HITS.clear()
    return install


@pytest.fixture
async def poll_ctx(app: Any, fast_polls: Any) -> AsyncIterator[Any]:
    from tests.fixtures.workers import start_inprocess_worker, stop_inprocess_worker

    poll = await start_inprocess_worker("poll")
    yield poll[0].ctx["sn"]
    await stop_inprocess_worker(*poll)


async def _rehost(w: Any, acct: Account, output: Any) -> tuple[Any, str | None]:
    from workers.hosting import rehost

    result: tuple[Any, str | None] = await asyncio.wait_for(
        rehost(w, acct.uid, "job-guard-test", output, "r8_key"), 15)
    return result


async def test_provider_host_resolving_inside_is_refused(poll_ctx: Any, replicate_account: Account,
                                                         inside: ServerThread, dns: Any) -> None:
    dns({"files.replicate.delivery": ["127.0.0.1"]})
    url = f"http://files.replicate.delivery:{inside.port}/f/out.png"
    output, error = await _rehost(poll_ctx, replicate_account, [url])
    assert output == [url] and error is not None and "loopback" in error
    assert HITS == []


async def test_only_provider_file_urls_are_copied(poll_ctx: Any, replicate_account: Account,
                                                  inside: ServerThread, dns: Any, app: Any,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    dns({"files.replicate.delivery": ["127.0.0.1"]})
    s = app.state.sn.settings
    monkeypatch.setattr(s, "fetch_allow", f"files.replicate.delivery:{inside.port}")
    mine = f"http://files.replicate.delivery:{inside.port}/f/out.png"
    elsewhere = [f"http://localhost:{inside.port}/f/secret", "https://example.com/cat.png",
                 "http://169.254.169.254/latest/meta-data/"]
    output = {"image": mine, "links": elsewhere, "text": f"made from {elsewhere[1]}"}
    hosted, error = await _rehost(poll_ctx, replicate_account, output)
    assert error is None
    assert hosted["image"] == "http://gateway.test/files/job-guard-test/0.png"
    assert hosted["links"] == elsewhere and hosted["text"] == output["text"]  # untouched
    assert HITS == ["out.png"]


async def test_redirect_to_an_inside_address_is_refused(poll_ctx: Any, replicate_account: Account,
                                                        inside: ServerThread, dns: Any, app: Any,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    dns({"files.replicate.delivery": ["127.0.0.1"]})
    monkeypatch.setattr(app.state.sn.settings, "fetch_allow", f"files.replicate.delivery:{inside.port}")
    for target in (f"http://127.0.0.1:{inside.port}/f/secret", f"http://[::ffff:127.0.0.1]:{inside.port}/f/secret",
                   "http://169.254.169.254/latest/meta-data/"):
        url = f"http://files.replicate.delivery:{inside.port}/r?to={target}"
        output, error = await _rehost(poll_ctx, replicate_account, url)
        assert output == url and error is not None and "only public hosts" in error, error
    assert HITS == []  # the redirect itself is served by /r, which does not record


async def test_malformed_output_urls(poll_ctx: Any, replicate_account: Account, app: Any) -> None:
    from urllib.parse import urlsplit

    host = urlsplit(app.state.sn.settings.replicate_base_url).hostname
    # On the provider's host, so it is copied: the bad port must end as a hosting_error.
    bad_port = f"http://{host}:99999/files/x/out-0.png"
    output, error = await _rehost(poll_ctx, replicate_account, {"a": bad_port, "b": "http://[x"})
    assert output == {"a": bad_port, "b": "http://[x"}
    assert error is not None and "could not be downloaded" in error
    # Not a URL anyone could fetch: left as the model wrote it, and no error.
    assert await _rehost(poll_ctx, replicate_account, ["http://[x", "http://a:99999/"]) == \
        (["http://[x", "http://a:99999/"], None)


async def test_slow_download_has_a_total_deadline(poll_ctx: Any, replicate_account: Account,
                                                  inside: ServerThread, dns: Any, app: Any,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    dns({"files.replicate.delivery": ["127.0.0.1"]})
    s = app.state.sn.settings
    monkeypatch.setattr(s, "fetch_allow", f"files.replicate.delivery:{inside.port}")
    monkeypatch.setattr(s, "hosting_timeout_seconds", 1.0)
    monkeypatch.setattr(s, "hosting_attempts", 1)
    url = f"http://files.replicate.delivery:{inside.port}/f/slow.bin"
    start = asyncio.get_running_loop().time()
    output, error = await _rehost(poll_ctx, replicate_account, url)
    assert output == url and error is not None and "longer than 1 s" in error
    assert asyncio.get_running_loop().time() - start < 5


async def test_storage_bad_urls_are_400(client: httpx.AsyncClient, replicate_account: Account) -> None:
    h = replicate_account.headers
    s3 = {"provider": "s3", "bucket": "abc", "access_key_id": "a", "secret_access_key": "b"}
    bn = {"provider": "bunny", "storage_zone": "z", "access_key": "k", "pull_zone_url": "https://x.b-cdn.net"}
    for body in ({**s3, "endpoint_url": "http://a:99999"}, {**s3, "endpoint_url": "http://[::1"},
                 {**s3, "endpoint_url": "ftp://example.com/"}, {**bn, "region_host": "a:99999"},
                 {**bn, "region_host": "http://[::1"}):
        r = await client.post("/storage", headers=h, json=body)
        assert r.status_code == 400, (body, r.text)
        assert "Invalid URL" in r.json()["error"]


async def test_storage_refusal_hints_at_the_allow_list_only_for_private_addresses(
        client: httpx.AsyncClient, replicate_account: Account) -> None:
    # Every refusal used to end "A private address is refused unless …", even a host that does
    # not resolve or an IP literal in a non-canonical form, which no allow-list entry fixes.
    s3 = {"provider": "s3", "bucket": "abc", "access_key_id": "a", "secret_access_key": "b"}
    inside = await client.post("/storage", headers=replicate_account.headers,
                               json={**s3, "endpoint_url": "http://127.0.0.1:9000"})
    odd = await client.post("/storage", headers=replicate_account.headers,
                            json={**s3, "endpoint_url": "http://0x7f.0.0.1:9000"})
    assert inside.status_code == 400 and "SYNCNODE_FETCH_ALLOW" in inside.json()["error"], inside.text
    assert odd.status_code == 400 and "non-canonical" in odd.json()["error"], odd.text
    assert "private address" not in odd.json()["error"] and "SYNCNODE_FETCH_ALLOW" not in odd.json()["error"]


async def test_storage_endpoint_refused_when_dns_changes_its_answer(
        client: httpx.AsyncClient, replicate_account: Account, bunny_url: str, moto_url: str,
        dns: Any) -> None:
    # Public to the first look, loopback to the next: the connection must not follow the second.
    bunny_port, moto_port = bunny_url.rsplit(":", 1)[1], moto_url.rsplit(":", 1)[1]
    fake = dns({"bunny.rebind.test": ["8.8.8.8", "127.0.0.1"], "s3.rebind.test": ["8.8.8.8", "127.0.0.1"]})
    bunny.FILES.clear()
    r = await client.post("/storage", headers=replicate_account.headers, json={
        "provider": "bunny", "storage_zone": "sn-zone", "access_key": "bunny-zone-password",
        "region_host": f"http://bunny.rebind.test:{bunny_port}", "pull_zone_url": "https://sn.b-cdn.net"})
    assert r.status_code == 400 and "loopback" in r.json()["error"], r.text
    assert bunny.FILES == {}
    r = await client.post("/storage", headers=replicate_account.headers, json={
        "provider": "s3", "bucket": "sn-outputs", "endpoint_url": f"http://s3.rebind.test:{moto_port}",
        "access_key_id": "AKIDTEST", "secret_access_key": "moto-secret-key-123"})
    assert r.status_code == 400 and "loopback" in r.json()["error"], r.text
    assert fake.calls.count("s3.rebind.test") >= 2  # it was looked at again, at connect time
    assert (await client.get("/storage", headers=replicate_account.headers)).json() == {"provider": "default"}


async def test_bunny_error_bodies_are_not_echoed(client: httpx.AsyncClient, replicate_account: Account,
                                                 bunny_url: str, allow_local: Any) -> None:
    allow_local(bunny_url)
    r = await client.post("/storage", headers=replicate_account.headers, json={
        "provider": "bunny", "storage_zone": "no-such-zone", "access_key": "k", "region_host": bunny_url,
        "pull_zone_url": "https://sn.b-cdn.net"})
    assert r.status_code == 400
    assert "HTTP 404" in r.json()["error"] and "Storage zone not found" not in r.json()["error"]


async def test_operator_default_storage_may_be_internal(poll_ctx: Any, replicate_account: Account,
                                                        bunny_url: str, app: Any,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    import base64
    import json

    from pydantic import SecretStr

    # Operator configuration, like the Replicate base URL: trusted without SYNCNODE_FETCH_ALLOW.
    monkeypatch.setattr(app.state.sn.settings, "default_storage", SecretStr(json.dumps({
        "provider": "bunny", "storage_zone": "sn-zone", "access_key": "bunny-zone-password",
        "region_host": bunny_url, "pull_zone_url": "https://op.b-cdn.net"})))
    data_url = "data:image/png;base64," + base64.b64encode(PNG).decode()
    hosted, error = await _rehost(poll_ctx, replicate_account, {"image": data_url})
    assert error is None and hosted == {"image": "https://op.b-cdn.net/job-guard-test/0.png"}
    assert bunny.FILES["sn-zone/job-guard-test/0.png"][0] == PNG


async def test_s3_client_is_built_once_per_configuration(moto_url: str, tmp_path: Any) -> None:
    import boto3

    from storage.files.s3 import S3Store, close_all

    boto3.client("s3", endpoint_url=moto_url, region_name="us-east-1", aws_access_key_id="AKIDTEST",
                 aws_secret_access_key="moto-secret-key-123").create_bucket(Bucket="sn-cache")
    allow = frozenset({moto_url.split("://", 1)[1]})

    def store(secret: str = "moto-secret-key-123") -> S3Store:
        return S3Store(bucket="sn-cache", region="us-east-1", endpoint_url=moto_url, access_key_id="AKIDTEST",
                       secret_access_key=secret, public_base_url=None, allow=allow)

    path = tmp_path / "f.txt"
    path.write_bytes(b"hello")
    a, b = store(), store()
    await a.put("one.txt", path, 5, "text/plain")
    await b.put("two.txt", path, 5, "text/plain")
    assert await a._client() is await b._client()  # built once: 100-200 ms of blocking work each
    assert await store("another-secret")._client() is not await a._client()
    await close_all()


def test_only_base64_data_urls_count_as_files(app: Any) -> None:
    from workers.hosting import file_urls, provider_hosts

    trusted = provider_hosts(app.state.sn.settings)
    png = "data:image/png;base64,iVBORw0KGgo="
    output = [png, "data: a token, then more text", "data:text/plain,hello", "data:x;base64 ,y"]
    assert file_urls(output, trusted) == [png]


def test_api_urls_in_output_are_not_fetched_with_the_users_key(app: Any) -> None:
    from workers.hosting import file_urls, provider_hosts

    base = app.state.sn.settings.replicate_base_url.rstrip("/")
    trusted = provider_hosts(app.state.sn.settings)
    mine = f"{base}/files/p1/out-0.png"
    output = {"image": mine, "account": f"{base}/account", "bill": f"{base}/predictions?x=1",
              "cdn": "https://replicate.delivery/pbxt/abc/out.png"}
    assert file_urls(output, trusted) == [mine, "https://replicate.delivery/pbxt/abc/out.png"]
