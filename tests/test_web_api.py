"""The web UI's server side without a browser: sign-up / sign-in / sign-out, the session cookie
as an API credential, CSRF, sign-in throttling, API key endpoints, /usage, page access."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from typing import Any

import httpx
import pytest

from tests.fixtures.accounts import Account, MakeAccount
from tests.helpers import session_cookie

ORIGIN = {"Origin": "http://gateway.test"}
PASSWORD = "a long enough password"


@pytest.fixture
def open_signup(app: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(app.state.sn.settings, "open_signup", True)


@pytest.fixture
async def clean_throttle(app: Any) -> Any:
    yield
    redis = app.state.sn.redis
    keys = [k async for k in redis.scan_iter("syncnode:signin-fail:*")]
    if keys:
        await redis.delete(*keys)


async def sign_up(client: httpx.AsyncClient, email: str) -> dict[str, Any]:
    r = await client.post("/ui/signup", json={"email": email, "password": PASSWORD}, headers=ORIGIN)
    assert r.status_code == 201, r.text
    body: dict[str, Any] = r.json()
    return body


async def test_sign_up_is_closed_unless_the_operator_opens_it(client: httpx.AsyncClient) -> None:
    r = await client.post("/ui/signup", json={"email": "a@example.com", "password": PASSWORD}, headers=ORIGIN)
    assert r.status_code == 403 and "Sign-up is closed" in r.json()["error"]
    page = await client.get("/ui/signup")
    assert page.status_code == 200 and 'id="signup-closed"' in page.text


async def test_session_cookie_is_a_credential_with_csrf(client: httpx.AsyncClient, open_signup: None) -> None:
    created = await sign_up(client, "Cookie@Example.com")
    assert created["balance"] == 5.0 and created["api_key"].startswith("sn_")
    cookie = client.cookies.get("sn_session")
    assert cookie
    # GET needs no token; POST without it (or from another origin) is refused.
    r = await client.get("/balance")
    assert r.status_code == 200 and r.json() == {"balance": 5.0}
    assert (await client.post("/keys")).status_code == 403
    # The spine checks the cookie and its CSRF token before reading a body: 403, not 400.
    r = await client.post("/chat-completion", content=b"{not json", headers=ORIGIN)
    assert r.status_code == 403 and "X-CSRF-Token" in r.json()["error"]
    token = {"X-CSRF-Token": created["csrf_token"]}
    r = await client.post("/keys", headers={**token, "Origin": "http://evil.test"})
    assert r.status_code == 403 and "Cross-site" in r.json()["error"]
    assert (await client.post("/keys", headers={**token, "X-CSRF-Token": "wrong"})).status_code == 403
    r = await client.post("/keys", headers={**token, **ORIGIN})
    assert r.status_code == 201, r.text
    # Bearer works as before: no cookie, no token.
    async with httpx.AsyncClient(transport=client._transport, base_url="http://gateway.test") as bare:
        h = {"Authorization": f"Bearer {r.json()['api_key']}"}
        assert (await bare.post("/keys", headers=h)).status_code == 201
        assert (await bare.get("/balance", headers=h)).json() == {"balance": 5.0}
    # Sign-out ends the session server-side: the old cookie is refused afterwards.
    r = await client.post("/ui/signout", headers={**token, **ORIGIN})
    assert r.status_code == 200 and "sn_session" not in client.cookies
    r = await client.get("/balance", headers=session_cookie(cookie))
    assert r.status_code == 401 and "sign in again" in r.json()["error"]


async def test_cookie_flags(client: httpx.AsyncClient, app: Any, open_signup: None,
                            monkeypatch: pytest.MonkeyPatch) -> None:
    r = await client.post("/ui/signup", json={"email": "flags@example.com", "password": PASSWORD}, headers=ORIGIN)
    header = r.headers["set-cookie"].lower()
    assert "httponly" in header and "samesite=lax" in header and "secure" not in header
    first = client.cookies["sn_session"]
    monkeypatch.setattr(app.state.sn.settings, "public_url_", "https://gw.example")
    r = await client.post("/ui/signin", json={"email": "flags@example.com", "password": PASSWORD}, headers=ORIGIN)
    assert r.status_code == 200 and "; secure" in r.headers["set-cookie"].lower()
    # Signing in again replaced the browser's session: the first cookie is dead.
    assert r.cookies["sn_session"] != first
    client.cookies.clear()
    assert (await client.get("/balance", headers=session_cookie(first))).status_code == 401
    assert (await client.get("/balance", headers=session_cookie(r.cookies["sn_session"]))).status_code == 200


async def test_sign_in_checks_input_and_origin(client: httpx.AsyncClient, open_signup: None,
                                               clean_throttle: None) -> None:
    await sign_up(client, "in@example.com")
    client.cookies.clear()
    body = {"email": "in@example.com", "password": PASSWORD}
    r = await client.post("/ui/signin", json=body)  # no Origin: a login-CSRF form from elsewhere
    assert r.status_code == 403
    r = await client.post("/ui/signin", json=body, headers={"Origin": "http://evil.test"})
    assert r.status_code == 403
    r = await client.post("/ui/signin", json={"email": "not-an-email", "password": "x"}, headers=ORIGIN)
    assert r.status_code == 400 and "email" in r.json()["error"]
    r = await client.post("/ui/signup", json={"email": "short@example.com", "password": "short"}, headers=ORIGIN)
    assert r.status_code == 400 and "password" in r.json()["error"]
    for weak in (" " * 8, "\t" * 12, "aaaaaaaa", "abababab"):  # long enough, and the first guesses
        r = await client.post("/ui/signup", json={"email": "weak@example.com", "password": weak}, headers=ORIGIN)
        assert r.status_code == 400 and "password" in r.json()["error"], weak
    r = await client.post("/ui/signup", json={"email": "IN@example.com", "password": PASSWORD}, headers=ORIGIN)
    assert r.status_code == 409
    r = await client.post("/ui/signin", json={"email": "IN@Example.com", "password": PASSWORD}, headers=ORIGIN)
    assert r.status_code == 200 and client.cookies.get("sn_session")


async def test_failed_sign_ins_are_throttled_per_account_and_address(
        client: httpx.AsyncClient, app: Any, open_signup: None, clean_throttle: None,
        monkeypatch: pytest.MonkeyPatch) -> None:
    await sign_up(client, "victim@example.com")
    client.cookies.clear()
    wrong = {"email": "victim@example.com", "password": "wrong password!"}
    for _ in range(5):
        r = await client.post("/ui/signin", json=wrong, headers=ORIGIN)
        assert r.status_code == 401 and r.json()["error"] == "Wrong email or password"
    r = await client.post("/ui/signin", json={**wrong, "password": PASSWORD}, headers=ORIGIN)
    assert r.status_code == 429 and int(r.headers["retry-after"]) > 0  # even the right password waits
    # Another account from the same address is not locked by this one...
    await sign_up(client, "other@example.com")
    client.cookies.clear()
    r = await client.post("/ui/signin", json={"email": "other@example.com", "password": PASSWORD}, headers=ORIGIN)
    assert r.status_code == 200
    # ...until the address itself has failed too often (unknown emails, API keys alike).
    monkeypatch.setattr(app.state.sn.settings, "signin_max_failures_per_address", 7)  # 5 + 2 below
    r = await client.post("/ui/signin", json={"email": "nobody@example.com", "password": "x" * 8}, headers=ORIGIN)
    assert r.status_code == 401
    r = await client.post("/ui/signin", json={"api_key": "sn_not_a_key"}, headers=ORIGIN)
    assert r.status_code == 401
    r = await client.post("/ui/signin", json={"email": "other@example.com", "password": PASSWORD}, headers=ORIGIN)
    assert r.status_code == 429


async def test_sign_in_with_an_api_key(client: httpx.AsyncClient, make_account: MakeAccount) -> None:
    acct = await make_account()
    r = await client.post("/ui/signin", json={"api_key": acct.api_key}, headers=ORIGIN)
    assert r.status_code == 200 and r.json()["uid"] == acct.uid
    assert (await client.get("/tasks")).status_code == 200
    r = await client.get("/ui/signin?next=/ui/keys")  # already signed in
    assert r.status_code == 303 and r.headers["location"] == "/ui/keys"


async def test_keys_list_create_revoke(client: httpx.AsyncClient, make_account: MakeAccount) -> None:
    a, b = await make_account(), await make_account()
    r = await client.post("/keys", headers=a.headers)
    new = r.json()["api_key"]
    mine = {"Authorization": f"Bearer {new}"}
    assert (await client.get("/balance", headers=mine)).status_code == 200  # now cached by the ingress
    listed = (await client.get("/keys", headers=a.headers)).json()
    assert listed["uid"] == a.uid and {k["prefix"] for k in listed["keys"]} == {a.api_key[:8], new[:8]}
    assert all("hash" not in k and len(k["prefix"]) == 8 for k in listed["keys"])
    r = await client.delete(f"/keys/{new[:8]}", headers=b.headers)  # someone else's key
    assert r.status_code == 404
    r = await client.delete(f"/keys/{new[:8]}", headers=a.headers)
    assert r.status_code == 200 and r.json() == {"revoked": 1, "prefix": new[:8]}
    r = await client.get("/balance", headers=mine)
    assert r.status_code == 401  # at once, not after the key cache expires
    assert (await client.get("/keys", headers=a.headers)).json()["keys"][0]["active"] is False
    assert (await client.delete("/keys/sn_zzzzz", headers=a.headers)).status_code == 404
    assert (await client.get("/keys")).status_code == 401


async def test_usage_and_task_filters(client: httpx.AsyncClient, funded: Account, chat_worker: Any) -> None:
    r = await client.post("/chat-completion", headers=funded.headers, json={"model": "m", "prompt": "hi"})
    assert r.status_code == 200, r.text
    u = (await client.get("/usage", headers=funded.headers)).json()
    assert u["balance"] == 4.98 and len(u["spend_per_day"]) == 30
    assert u["spend_per_day"][-1]["spend"] == 0.02 and u["tasks_by_status"]["completed"] == 1
    t = (await client.get("/tasks?kind=chat&status=completed", headers=funded.headers)).json()
    assert t["total"] == 1 and t["tasks"][0]["kind"] == "chat"
    assert (await client.get("/tasks?kind=generate", headers=funded.headers)).json()["total"] == 0
    assert (await client.get("/tasks?kind=nope", headers=funded.headers)).status_code == 400
    assert (await client.get("/tasks?status=running", headers=funded.headers)).status_code == 400
    assert (await client.get("/usage?days=0", headers=funded.headers)).status_code == 400


async def test_pages_need_a_session_and_keep_the_api_routes(client: httpx.AsyncClient, funded: Account) -> None:
    for path in ("/", "/ui/tasks", "/ui/tasks/1", "/ui/keys", "/ui/billing", "/ui/playground"):
        r = await client.get(path)
        assert r.status_code == 303 and r.headers["location"].startswith("/ui/signin?next="), path
    for path in ("/ui/docs", "/ui/signin"):
        r = await client.get(path)
        assert r.status_code == 200 and "frame-ancestors 'none'" in r.headers["content-security-policy"]
    r = await client.get("/ui/signin?next=//evil.example/x")
    assert 'data-next="/"' in r.text
    # POST / is still the reference's moderation host.
    r = await client.post("/", json={"text": "hi"})
    assert r.status_code == 401
    r = await client.get("/static/vendor/htmx-2.0.11.min.js")
    assert r.status_code == 200 and r.text.startswith("/*! htmx.org 2.0.11")
    assert (await client.get("/static/../app.py")).status_code == 404


def test_set_password_cli(stack: dict[str, Any], make_account: MakeAccount) -> None:
    import asyncio

    # The CLI runs its own event loop: a subprocess, like an operator's shell.
    def cli(*args: str, stdin: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "ingress.cli", "accounts", "set-password", *args],
                              input=stdin, capture_output=True, text=True, env=dict(os.environ), timeout=60)

    acct = asyncio.run(_account(stack))
    r = cli("--uid", acct, "--password-stdin", stdin="short\n")
    assert r.returncode == 2 and "password" in r.stderr
    r = cli("--uid", acct, "--password-stdin", stdin=PASSWORD + "\n")
    assert r.returncode == 1 and "no email" in r.stderr
    r = cli("--uid", acct, "--login-email", "Op@Example.com", "--password-stdin", stdin=PASSWORD + "\n")
    assert r.returncode == 0, r.stderr
    r = cli("--email", "op@example.com", "--password-stdin", stdin=PASSWORD + "!\n")
    assert r.returncode == 0 and acct in r.stdout
    r = cli("--uid", "no-such-uid", "--login-email", "x@example.com", "--password-stdin", stdin=PASSWORD + "\n")
    assert r.returncode == 1


async def _account(stack: dict[str, Any]) -> str:
    import asyncpg

    from ingress.accounts import create_account

    conn = await asyncpg.connect(stack["pg"].dsn)
    try:
        from decimal import Decimal

        return str((await create_account(conn, None, Decimal("5")))["uid"])
    finally:
        await conn.close()


async def test_the_last_active_key_cannot_be_revoked(client: httpx.AsyncClient, make_account: MakeAccount) -> None:
    """Revoking an account's only live key would leave nothing that can call the API to make
    another (an account made by the CLI has no password): 409, and the key keeps working."""
    a = await make_account()
    r = await client.delete(f"/keys/{a.api_key[:8]}", headers=a.headers)
    assert r.status_code == 409 and "last active API key" in r.json()["error"]
    assert (await client.get("/balance", headers=a.headers)).status_code == 200
    spare = (await client.post("/keys", headers=a.headers)).json()["api_key"]
    r = await client.delete(f"/keys/{a.api_key[:8]}", headers=a.headers)  # another one lives now
    assert r.status_code == 200 and r.json()["revoked"] == 1
    theirs = {"Authorization": f"Bearer {spare}"}
    assert (await client.delete(f"/keys/{spare[:8]}", headers=theirs)).status_code == 409
    assert (await client.delete(f"/keys/{a.api_key[:8]}", headers=theirs)).json()["revoked"] == 0  # already


async def test_two_revokes_at_once_leave_one_key(client: httpx.AsyncClient, make_account: MakeAccount) -> None:
    a = await make_account()
    spare = (await client.post("/keys", headers=a.headers)).json()["api_key"]
    both = await asyncio.gather(client.delete(f"/keys/{a.api_key[:8]}", headers=a.headers),
                                client.delete(f"/keys/{spare[:8]}", headers=a.headers))
    assert sorted(r.status_code for r in both) == [200, 409]
    live = [k for k in (await client.get("/keys", headers={"Authorization": f"Bearer {spare}"}
                                         if both[0].status_code == 200 else a.headers)).json()["keys"] if k["active"]]
    assert len(live) == 1


async def test_a_session_ends_with_the_key_or_password_it_was_opened_with(
        client: httpx.AsyncClient, app: Any, make_account: MakeAccount, open_signup: None) -> None:
    from ingress.web.passwords import hash_password
    from storage.web import LoginRepository

    acct = await make_account()
    spare = (await client.post("/keys", headers=acct.headers)).json()["api_key"]
    r = await client.post("/ui/signin", json={"api_key": spare}, headers=ORIGIN)
    assert r.status_code == 200
    assert (await client.get("/balance")).status_code == 200
    await client.delete(f"/keys/{spare[:8]}", headers=acct.headers)
    r = await client.get("/balance")
    assert r.status_code == 401 and "revoked" in r.json()["error"]
    # A password session ends when the password changes (`syncnode accounts set-password`).
    client.cookies.clear()
    created = await sign_up(client, "stamp@example.com")
    assert (await client.get("/balance")).status_code == 200
    new = "new password 1"
    await LoginRepository(app.state.sn.db).set_password(created["uid"], "stamp@example.com", hash_password(new))
    r = await client.get("/balance")
    assert r.status_code == 401 and "password changed" in r.json()["error"]
    r = await client.post("/ui/signin", json={"email": "stamp@example.com", "password": new}, headers=ORIGIN)
    assert r.status_code == 200 and (await client.get("/balance")).status_code == 200


async def test_pages_send_an_ended_session_to_sign_in(
        client: httpx.AsyncClient, app: Any, make_account: MakeAccount, open_signup: None) -> None:
    """The pages apply the API's rule: a session whose key was revoked (or whose password
    changed) gets the sign-in page, not a dashboard shell whose every call answers 401."""
    from ingress.web.passwords import hash_password
    from storage.web import LoginRepository

    acct = await make_account()
    spare = (await client.post("/keys", headers=acct.headers)).json()["api_key"]
    assert (await client.post("/ui/signin", json={"api_key": spare}, headers=ORIGIN)).status_code == 200
    assert (await client.get("/ui/keys")).status_code == 200
    await client.delete(f"/keys/{spare[:8]}", headers=acct.headers)
    r = await client.get("/ui/keys")
    assert r.status_code == 303 and r.headers["location"] == "/ui/signin?next=%2Fui%2Fkeys"
    assert (await client.get("/ui/signin")).status_code == 200  # not bounced back to the dead page
    client.cookies.clear()
    created = await sign_up(client, "pages-stamp@example.com")
    assert (await client.get("/")).status_code == 200
    await LoginRepository(app.state.sn.db).set_password(created["uid"], "pages-stamp@example.com",
                                                        hash_password("new password 2"))
    r = await client.get("/")
    assert r.status_code == 303 and r.headers["location"].startswith("/ui/signin")


async def test_the_tasks_filter_offers_every_kind_the_api_filters_by(client: httpx.AsyncClient,
                                                                     open_signup: None) -> None:
    from jobs.names import KINDS

    await sign_up(client, "kinds@example.com")
    page = (await client.get("/ui/tasks")).text
    assert "embeddings" in KINDS  # /v1/embeddings tasks were listed but could not be picked
    for kind in KINDS:
        assert f"<option>{kind}</option>" in page, kind
