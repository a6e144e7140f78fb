"""Security review 2 fixes on the web side: no open redirect after sign-in, the sign-in limit
holds under concurrency, sign-ups are rate limited per address, sessions and API keys per
account are capped, huge task ids are 404 rather than 500."""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import threading
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.fixtures.accounts import MakeAccount
from tests.helpers import session_cookie

ORIGIN = {"Origin": "http://gateway.test"}
PASSWORD = "a long enough password"
APP_JS = Path(__file__).parent.parent / "ingress" / "web" / "static" / "app.js"


async def _clear_counters(redis: Any) -> None:
    keys = [k async for k in redis.scan_iter("syncnode:signin-fail:*")]
    if keys:
        await redis.delete(*keys)


@pytest.fixture
async def clean_counters(app: Any) -> AsyncIterator[None]:
    # Before too: earlier tests' failed sign-ins from 127.0.0.1 may still be counted.
    await _clear_counters(app.state.sn.redis)
    yield
    await _clear_counters(app.state.sn.redis)


async def _with_password(app: Any, make_account: MakeAccount) -> tuple[str, str]:
    from ingress.web import passwords
    from storage.web import LoginRepository

    acct = await make_account()
    email = f"sec-{uuid.uuid4().hex[:8]}@example.com"
    await LoginRepository(app.state.sn.db).set_password(acct.uid, email, passwords.hash_password(PASSWORD))
    return acct.uid, email


# ---- open redirect ------------------------------------------------------------------------

@pytest.mark.parametrize("target", [
    "/\t/evil.example/phish", "/\n/evil.example", "/\r/evil.example", "/ /evil.example", "/\\evil.example",
    "/x\\y", "//evil.example", "/\x00/evil", "/\x7f/evil", "/\u00a0/evil", "/\u2028/evil",
    "https://evil.example", "evil.example", "",
])
async def test_sign_in_next_refuses_what_a_browser_could_read_as_another_host(
        client: httpx.AsyncClient, target: str) -> None:
    client.cookies.clear()
    r = await client.get("/ui/signin", params={"next": target})
    assert r.status_code == 200
    assert re.search(r'id="signin-form" class="stack" data-next="/"', r.text), target


async def test_sign_in_next_keeps_a_local_path(client: httpx.AsyncClient) -> None:
    client.cookies.clear()
    r = await client.get("/ui/signin", params={"next": "/ui/tasks?kind=chat"})
    assert 'data-next="/ui/tasks?kind=chat"' in r.text


def test_the_page_script_only_follows_same_origin_targets() -> None:
    js = APP_JS.read_text()
    m = re.search(r"^function sameOrigin\(next\) \{.*?^\}", js, re.S | re.M)
    assert m and "location.assign(sameOrigin(f.dataset.next))" in js
    run = m.group(0) + """
const location = {origin: "http://gateway.test"};
for (const n of JSON.parse(process.argv[1])) console.log(sameOrigin(n));"""
    cases = ["/\t/evil.example/phish", "//evil.example/x", "/\\evil.example", "https://evil.example/",
             "javascript:alert(1)", "", "/ui/keys?x=1#k"]
    out = subprocess.run(["node", "-e", run, json.dumps(cases)], capture_output=True, text=True,
                         check=True).stdout.split("\n")
    assert out[:7] == ["/", "/", "/", "/", "/", "/", "/ui/keys?x=1#k"]


# ---- sign-in throttle under concurrency ----------------------------------------------------

async def test_concurrent_wrong_passwords_cannot_pass_the_account_limit(
        client: httpx.AsyncClient, app: Any, make_account: MakeAccount, clean_counters: None) -> None:
    from storage.sessions import FailureCounter

    st = app.state.sn
    _, email = await _with_password(app, make_account)
    client.cookies.clear()
    limit = st.settings.signin_max_failures_per_account
    rs = await asyncio.gather(*(client.post("/ui/signin", json={"email": email, "password": f"guess {i} xxxx"},
                                            headers=ORIGIN) for i in range(20)))
    codes = [r.status_code for r in rs]
    assert codes.count(401) == limit and codes.count(429) == 20 - limit, codes
    assert all(int(r.headers["retry-after"]) > 0 for r in rs if r.status_code == 429)
    fails = FailureCounter(st.redis, st.settings.signin_failure_window_seconds)
    assert await fails.count("account", email) == limit
    assert await fails.count("address", "127.0.0.1") == limit


async def test_a_successful_sign_in_hands_its_reservation_back(
        client: httpx.AsyncClient, app: Any, make_account: MakeAccount, clean_counters: None) -> None:
    from storage.sessions import FailureCounter

    st = app.state.sn
    _, email = await _with_password(app, make_account)
    acct = await make_account()
    for body in ({"email": email, "password": PASSWORD}, {"api_key": acct.api_key}):
        client.cookies.clear()
        r = await client.post("/ui/signin", json=body, headers=ORIGIN)
        assert r.status_code == 200, r.text
    fails = FailureCounter(st.redis, st.settings.signin_failure_window_seconds)
    assert await fails.count("address", "127.0.0.1") == 0
    assert await fails.count("account", email) == 0


async def test_password_hashing_runs_on_its_own_bounded_pool() -> None:
    from ingress.web import passwords

    passwords.configure(2)
    active, peak, names = 0, 0, set()
    lock = threading.Lock()

    def work() -> None:
        nonlocal active, peak
        with lock:
            active += 1
            peak = max(peak, active)
            names.add(threading.current_thread().name)
        time.sleep(0.05)
        with lock:
            active -= 1

    await asyncio.gather(*(passwords._run(work) for _ in range(8)))
    assert peak == 2 and all(n.startswith("argon2") for n in names), (peak, names)
    ok, _ = await passwords.verify(passwords.hash_password(PASSWORD), PASSWORD)
    assert ok


# ---- sign-up per address -------------------------------------------------------------------

async def test_sign_ups_are_limited_per_address(client: httpx.AsyncClient, app: Any, clean_counters: None,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(app.state.sn.settings, "open_signup", True)
    monkeypatch.setattr(app.state.sn.settings, "signup_max_per_address", 3)
    email = f"su-{uuid.uuid4().hex[:8]}@example.com"
    r = await client.post("/ui/signup", json={"email": email, "password": "short"}, headers=ORIGIN)
    assert r.status_code == 400  # bad input is not counted
    assert (await client.post("/ui/signup", json={"email": email, "password": PASSWORD},
                              headers=ORIGIN)).status_code == 201
    # Probing whether an email is taken uses up the same allowance.
    r = await client.post("/ui/signup", json={"email": email, "password": PASSWORD}, headers=ORIGIN)
    assert r.status_code == 409
    assert (await client.post("/accounts", json={})).status_code == 201  # open POST /accounts counts too
    r = await client.post("/ui/signup", json={"email": "x" + email, "password": PASSWORD}, headers=ORIGIN)
    assert r.status_code == 429 and int(r.headers["retry-after"]) > 0
    assert "sign-ups" in r.json()["error"]
    assert (await client.post("/accounts", json={})).status_code == 429
    # The operator's admin token is not limited.
    r = await client.post("/accounts", json={}, headers={"Authorization": "Bearer test-admin-token"})
    assert r.status_code == 201


# ---- sessions and API keys per account -----------------------------------------------------

async def test_sessions_per_account_are_capped_oldest_first(
        client: httpx.AsyncClient, app: Any, make_account: MakeAccount, clean_counters: None,
        monkeypatch: pytest.MonkeyPatch) -> None:
    from ingress.web.sessions import store

    st = app.state.sn
    monkeypatch.setattr(st.settings, "max_sessions_per_account", 3)
    acct = await make_account()
    cookies = []
    for _ in range(6):
        client.cookies.clear()
        r = await client.post("/ui/signin", json={"api_key": acct.api_key}, headers=ORIGIN)
        assert r.status_code == 200
        cookies.append(r.cookies["sn_session"])
    client.cookies.clear()
    assert await store(st).count(acct.uid) == 3
    live = [(await client.get("/balance", headers=session_cookie(c))).status_code for c in cookies]
    assert live == [401, 401, 401, 200, 200, 200]
    # Signing out takes the session out of the account's index too.
    r = await client.get("/balance", headers=session_cookie(cookies[-1]))
    s = await store(st).get(cookies[-1])
    assert s is not None and r.status_code == 200
    r = await client.post("/ui/signout", headers={**session_cookie(cookies[-1]), **ORIGIN,
                                                  "X-CSRF-Token": s.csrf})
    assert r.status_code == 200
    assert await store(st).count(acct.uid) == 2


async def test_api_keys_per_account_are_capped(client: httpx.AsyncClient, app: Any, make_account: MakeAccount,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(app.state.sn.settings, "max_api_keys_per_account", 4)
    acct = await make_account()  # has one key
    rs = await asyncio.gather(*(client.post("/keys", headers=acct.headers) for _ in range(6)))
    codes = sorted(r.status_code for r in rs)
    assert codes == [201, 201, 201, 409, 409, 409], codes
    refused = next(r for r in rs if r.status_code == 409)
    assert "Too many API keys" in refused.json()["error"] and "revoke" in refused.json()["error"]
    created = next(r for r in rs if r.status_code == 201).json()["prefix"]
    assert (await client.delete(f"/keys/{created}", headers=acct.headers)).status_code == 200
    assert (await client.post("/keys", headers=acct.headers)).status_code == 201


# ---- integer path parameters ---------------------------------------------------------------

@pytest.mark.parametrize("raw", ["99999999999999999999", "9223372036854775808", "1000000000000000000",
                                 "+1", "1_0", "%D9%A3", "-1"])
async def test_task_ids_that_cannot_exist_are_404(client: httpx.AsyncClient, make_account: MakeAccount,
                                                 raw: str) -> None:
    acct = await make_account()
    for method, path in [("GET", f"/tasks/{raw}"), ("DELETE", f"/tasks/{raw}"),
                         ("POST", f"/tasks/{raw}/cancel"), ("GET", f"/tasks/{raw}/deliveries"),
                         ("GET", f"/v1/tasks/{raw}/stream")]:
        r = await client.request(method, path, headers=acct.headers)
        assert r.status_code == 404, (method, path, r.status_code, r.text)


async def test_the_task_page_refuses_ids_that_cannot_exist(client: httpx.AsyncClient,
                                                           make_account: MakeAccount) -> None:
    acct = await make_account()
    r = await client.post("/ui/signin", json={"api_key": acct.api_key}, headers=ORIGIN)
    assert r.status_code == 200
    assert (await client.get("/ui/tasks/99999999999999999999")).status_code == 404
    assert (await client.get("/ui/tasks/12")).status_code == 200
    # The job_id every submit answers with names its task too (the billing history shows job ids).
    job_id = "0b8d2c1e-7f3a-4c5d-9e6f-1a2b3c4d5e6f"
    page = await client.get(f"/ui/tasks/{job_id}")
    assert page.status_code == 200 and f'data-id="{job_id}"' in page.text
    for bad in ("0", "000", "-1", "1e3", "abc", "%3Cscript%3E", job_id.upper(), job_id + "0"):
        assert (await client.get(f"/ui/tasks/{bad}")).status_code == 404, bad
