"""imageUrl behind the SSRF guard. Loopback URLs go through the whole API while a loopback
server records every request (it must see none); private and metadata ranges are tested
through the guard with a patched resolver and a network backend that records connection
attempts instead of making them. No test sends traffic outside 127.0.0.0/8 and ::1."""

from __future__ import annotations

from typing import Any

import httpcore
import httpx
import pytest

from storage import egress
from storage.egress import FetchPolicy, FetchRefused, fetch, why_not_public
from tests.fixtures.accounts import MakeAccount, audit
from tests.fixtures.moderation import ImageServer


class Recorder(httpcore.AsyncNetworkBackend):
    """Stands where sockets are opened: records the address, connects nowhere."""

    def __init__(self) -> None:
        self.attempts: list[tuple[str, int]] = []

    async def connect_tcp(self, host: str, port: int, timeout: float | None = None,
                          local_address: str | None = None, socket_options: Any = None
                          ) -> httpcore.AsyncNetworkStream:
        self.attempts.append((host, port))
        raise httpcore.ConnectError("recorder: no real connection")


def resolving_to(*addresses: str) -> Any:
    async def resolve(host: str, port: int) -> list[str]:
        return list(addresses)
    return resolve


async def refused(client: httpx.AsyncClient, acct: Any, url: str) -> str:
    r = await client.post("/moderate", headers=acct.headers, json={"imageUrl": url})
    assert r.status_code == 400, r.text
    return str(r.json()["error"])


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost", "[::1]", "127.1", "0x7f000001", "2130706433"])
async def test_loopback_refused_and_never_fetched(host: str, client: httpx.AsyncClient,
                                                  make_account: MakeAccount, image_server: ImageServer,
                                                  app: Any) -> None:
    acct = await make_account()
    before = len(image_server.hits)
    msg = await refused(client, acct, f"http://{host}:{image_server.port}/img.png")
    assert "loopback" in msg or "resolve" in msg or "non-canonical" in msg, msg
    assert len(image_server.hits) == before
    bal, total = await audit(app, acct.uid)
    assert bal == total == 5_000_000


async def test_public_name_resolving_to_loopback(client: httpx.AsyncClient, make_account: MakeAccount,
                                                 image_server: ImageServer,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(egress, "system_resolve", resolving_to("127.0.0.1"))
    acct = await make_account()
    before = len(image_server.hits)
    msg = await refused(client, acct, f"http://images.example.com:{image_server.port}/img.png")
    assert "images.example.com" in msg and "loopback" in msg
    assert len(image_server.hits) == before


async def test_redirect_to_loopback(client: httpx.AsyncClient, make_account: MakeAccount, app: Any,
                                    image_server: ImageServer, monkeypatch: pytest.MonkeyPatch) -> None:
    # The redirecting server itself is allowed (an operator's internal host); its target is not.
    monkeypatch.setattr(app.state.sn.settings, "fetch_allow", f"127.0.0.1:{image_server.port}")
    acct = await make_account()
    target = f"http://localhost:{image_server.port}/img.png"
    msg = await refused(client, acct, f"http://127.0.0.1:{image_server.port}/redirect?to={target}")
    assert "loopback" in msg
    assert image_server.hits[-1] == "/redirect"  # the redirect was read, the image never


async def test_allow_list_lets_only_the_named_host_through(client: httpx.AsyncClient,
                                                           make_account: MakeAccount, moderation_worker: Any, app: Any,
                                                           image_server: ImageServer,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    acct = await make_account()
    monkeypatch.setattr(app.state.sn.settings, "fetch_allow", f"127.0.0.1:{image_server.port + 1}")
    await refused(client, acct, f"http://127.0.0.1:{image_server.port}/img.png")
    monkeypatch.setattr(app.state.sn.settings, "fetch_allow", f"127.0.0.1:{image_server.port}")
    r = await client.post("/moderate", headers=acct.headers, json={"imageUrl": f"{image_server.url}/img.png"})
    assert r.status_code == 200, r.text


@pytest.mark.parametrize("address", [
    "10.0.0.1", "172.16.5.4", "192.168.1.10", "169.254.169.254", "100.64.0.1", "0.0.0.0", "224.0.0.1",
    "240.0.0.1", "255.255.255.255", "fc00::1", "fd12:3456::1", "fe80::1", "ff02::1", "::",
    "::ffff:10.0.0.1", "::ffff:169.254.169.254", "64:ff9b::a9fe:a9fe", "2002:c0a8:0101::1", "fec0::1",
])
async def test_private_and_metadata_ranges_refused_before_connecting(address: str) -> None:
    rec = Recorder()
    with pytest.raises(FetchRefused) as e:
        await fetch("http://innocent.example.com/cat.png", FetchPolicy(), what="imageUrl",
                    resolver=resolving_to(address), inner=rec)
    assert "innocent.example.com" in e.value.message and "resolves to a" in e.value.message
    assert address not in e.value.message  # the operator's network is not mapped for the caller
    assert rec.attempts == []


async def test_mixed_answer_refused() -> None:
    rec = Recorder()
    with pytest.raises(FetchRefused):
        await fetch("https://cdn.example.com/a.png", FetchPolicy(),
                    resolver=resolving_to("93.184.216.34", "10.1.2.3"), inner=rec)
    assert rec.attempts == []


async def test_public_address_is_connected_to_as_resolved() -> None:
    # The control: a public answer passes the guard and the connection goes to that very address.
    rec = Recorder()
    with pytest.raises(FetchRefused, match="could not be fetched"):
        await fetch("https://cdn.example.com/a.png", FetchPolicy(), resolver=resolving_to("93.184.216.34"),
                    inner=rec)
    assert rec.attempts == [("93.184.216.34", 443)]


@pytest.mark.parametrize("url,why", [
    ("ftp://example.com/a.png", "http or https"), ("file:///etc/passwd", "http or https"),
    ("gopher://example.com/", "http or https"), ("http://user:pw@example.com/a.png", "user name"),
    ("not a url", "http or https"),
])
async def test_only_http_and_https(url: str, why: str) -> None:
    rec = Recorder()
    with pytest.raises(FetchRefused, match=why):
        await fetch(url, FetchPolicy(), resolver=resolving_to("93.184.216.34"), inner=rec)
    assert rec.attempts == []


@pytest.mark.parametrize("ip,public", [("8.8.8.8", True), ("2606:4700::1111", True), ("127.0.0.1", False),
                                       ("::1", False), ("::ffff:127.0.0.1", False)])
def test_why_not_public(ip: str, public: bool) -> None:
    import ipaddress

    assert (why_not_public(ipaddress.ip_address(ip)) is None) is public


async def test_size_cap_and_non_image(client: httpx.AsyncClient, make_account: MakeAccount, app: Any,
                                      allow_image_server: ImageServer) -> None:
    acct = await make_account()
    msg = await refused(client, acct, f"{allow_image_server.url}/big.png")
    assert "larger than" in msg
    msg = await refused(client, acct, f"{allow_image_server.url}/page")
    assert "PNG, JPEG" in msg
    msg = await refused(client, acct, f"{allow_image_server.url}/missing.png")
    assert "HTTP 404" in msg
    bal, total = await audit(app, acct.uid)
    assert bal == total == 5_000_000
