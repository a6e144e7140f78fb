"""Per-account limits: requests per second per route group and tasks in flight per pool.

Over a limit the answer is 429 with Retry-After and RateLimit-* headers, and nothing is charged.
"""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import httpx

from jobs import keys
from tests.fixtures.accounts import MakeAccount, audit

CHAT = "/chat-completion"
ADMIN = {"Authorization": "Bearer test-admin-token"}
CHAT_KEYS = {"openrouter_key": "sk-or-v1-limits-0001", "chatgpt_key": "sk-limits-0002"}


async def limit(client: httpx.AsyncClient, uid: str, **sections: dict[str, float | None]) -> dict[str, Any]:
    r = await client.post("/admin/limits", headers=ADMIN, json={"uid": uid, **sections})
    assert r.status_code == 200, r.text
    return dict(r.json())


async def charges(app: Any, uid: str) -> int:
    return int(await app.state.sn.db.fetchval("SELECT count(*) FROM ledger WHERE uid = $1 AND kind = 'charge'", uid))


def assert_limited(r: httpx.Response) -> None:
    assert r.status_code == 429, r.text
    for h in ("Retry-After", "RateLimit-Limit", "RateLimit-Remaining", "RateLimit-Reset"):
        assert r.headers[h].isdigit(), (h, r.headers)
    assert int(r.headers["Retry-After"]) >= 1


async def test_over_the_rate_limit_is_429_with_headers_and_charged_nothing(
        client: httpx.AsyncClient, make_account: MakeAccount, app: Any) -> None:
    acct = await make_account(keys=CHAT_KEYS)
    await limit(client, acct.uid, rate={"chat": 0.5}, burst={"chat": 2})
    before = await audit(app, acct.uid)
    body = {"model": "m", "prompt": "hi"}
    # Two pass the bucket (no worker: async, so they are only charged and queued).
    for _ in range(2):
        r = await client.post(CHAT, headers={**acct.headers, "Prefer": "respond-async"}, json=body)
        assert r.status_code == 202, r.text
    r = await client.post(CHAT, headers={**acct.headers, "Prefer": "respond-async"}, json=body)
    assert_limited(r)
    assert set(r.json()) == {"error"} and "Rate limit" in r.json()["error"]
    assert r.headers["RateLimit-Limit"] == "2" and r.headers["RateLimit-Remaining"] == "0"
    assert 1 <= int(r.headers["Retry-After"]) <= 2
    assert await charges(app, acct.uid) == 2
    balance, total = await audit(app, acct.uid)
    assert balance == total == before[0] - 2 * 20_000


async def test_the_rate_limit_is_taken_before_the_body_is_read(
        client: httpx.AsyncClient, make_account: MakeAccount, app: Any) -> None:
    acct = await make_account(keys=CHAT_KEYS)
    await limit(client, acct.uid, rate={"chat": 0.01}, burst={"chat": 1})
    await client.post(CHAT, headers={**acct.headers, "Prefer": "respond-async"}, json={"model": "m", "prompt": "x"})
    # Invalid JSON: a 400 would mean the body was read first.
    r = await client.post(CHAT, headers={**acct.headers, "Content-Type": "application/json"}, content=b"{nope")
    assert_limited(r)


async def test_route_groups_have_separate_buckets(
        client: httpx.AsyncClient, make_account: MakeAccount) -> None:
    acct = await make_account(keys=CHAT_KEYS)
    await limit(client, acct.uid, rate={"read": 0.01}, burst={"read": 1})
    assert (await client.get("/balance", headers=acct.headers)).status_code == 200
    assert_limited(await client.get("/balance", headers=acct.headers))
    assert_limited(await client.get("/tasks", headers=acct.headers))  # the same "read" group
    assert (await client.get("/api-keys", headers=acct.headers)).status_code == 200  # "account"


async def test_the_bucket_refills_at_its_rate(client: httpx.AsyncClient, make_account: MakeAccount) -> None:
    acct = await make_account()
    await limit(client, acct.uid, rate={"read": 5}, burst={"read": 1})
    assert (await client.get("/balance", headers=acct.headers)).status_code == 200
    assert_limited(await client.get("/balance", headers=acct.headers))
    await asyncio.sleep(0.25)  # one token comes back every 0.2 s
    assert (await client.get("/balance", headers=acct.headers)).status_code == 200
    assert_limited(await client.get("/balance", headers=acct.headers))


async def test_v1_429_is_openai_shaped_with_retry_after(
        client: httpx.AsyncClient, make_account: MakeAccount) -> None:
    acct = await make_account(keys=CHAT_KEYS)
    await limit(client, acct.uid, rate={"v1": 0.01}, burst={"v1": 1})
    body = {"model": "openai/gpt-4o", "messages": [{"role": "user", "content": "hi"}]}
    await client.post("/v1/chat/completions", headers={**acct.headers, "Prefer": "respond-async"}, json=body)
    r = await client.post("/v1/chat/completions", headers=acct.headers, json=body)
    assert_limited(r)
    err = r.json()["error"]
    assert err["type"] == "rate_limit_exceeded" and "Rate limit" in err["message"]


async def test_admin_limits_overrides_and_resets_one_account(
        client: httpx.AsyncClient, make_account: MakeAccount, app: Any) -> None:
    acct, other = await make_account(), await make_account()
    out = await limit(client, acct.uid, rate={"read": 3}, in_flight={"chat": 2})
    assert out["overrides"] == {"rate": {"read": 3.0}, "in_flight": {"chat": 2.0}}
    s = app.state.sn.settings
    assert out["limits"]["rate"]["read"] == 3 and out["limits"]["in_flight"]["chat"] == 2
    assert out["limits"]["rate"]["chat"] == s.rate_limit_chat  # not overridden: the setting
    r = await client.get("/admin/limits", headers=ADMIN, params={"uid": other.uid})
    assert r.json()["overrides"] == {} and r.json()["limits"]["in_flight"]["chat"] == s.in_flight_chat
    out = await limit(client, acct.uid, rate={"read": None})  # null removes one override
    assert out["overrides"] == {"in_flight": {"chat": 2.0}}
    out = await limit(client, acct.uid, in_flight={"chat": None})
    assert out["overrides"] == {}


async def test_admin_limits_refuses_bad_input_and_non_admins(
        client: httpx.AsyncClient, make_account: MakeAccount) -> None:
    acct = await make_account()
    assert (await client.post("/admin/limits", json={"uid": acct.uid})).status_code == 401
    assert (await client.post("/admin/limits", headers=acct.headers, json={"uid": acct.uid})).status_code == 403
    assert (await client.get("/admin/limits", headers=acct.headers, params={"uid": acct.uid})).status_code == 403
    u = acct.uid
    bads: list[dict[str, Any]] = [
        {"uid": u, "rate": {"nope": 1}}, {"uid": u, "in_flight": {"poll": 1}}, {"uid": u, "rate": {"chat": -1}},
        {"uid": u, "rate": {"chat": "x"}}, {"uid": u, "burst": {"chat": 0}}, {"uid": u, "surprise": 1},
        {"rate": {}}]
    for bad in bads:
        r = await client.post("/admin/limits", headers=ADMIN, json=bad)
        assert r.status_code == 400, (bad, r.text)
    r = await client.post("/admin/limits", headers=ADMIN, json={"uid": "no-such-uid", "rate": {"chat": 1}})
    assert r.status_code == 404
    assert (await client.get("/admin/limits", headers=ADMIN, params={"uid": "no-such"})).status_code == 404


async def test_in_flight_limit_per_pool_refuses_before_the_charge_and_frees_on_finish(
        client: httpx.AsyncClient, make_account: MakeAccount, app: Any, chat_worker: Any) -> None:
    acct = await make_account(keys=CHAT_KEYS)
    await limit(client, acct.uid, in_flight={"chat": 2})
    hdrs = {**acct.headers, "Prefer": "respond-async"}
    slow = [await client.post(CHAT, headers=hdrs, json={"model": "slow-1.0", "prompt": f"s{i} {uuid.uuid4()}"})
            for i in range(2)]
    assert [r.status_code for r in slow] == [202, 202]
    r = await client.post(CHAT, headers=hdrs, json={"model": "m", "prompt": "third"})
    assert_limited(r)
    assert "in flight" in r.json()["error"] and r.headers["RateLimit-Limit"] == "2"
    assert await charges(app, acct.uid) == 2
    # Another pool is counted on its own.
    mod = await client.post("/moderate", headers=hdrs, json={"text": "hello"})
    assert mod.status_code != 429, mod.text
    # When the slow ones finish, their slots are free again.
    redis = app.state.sn.redis
    for _ in range(200):
        if await redis.zcard(keys.in_flight("chat", acct.uid)) == 0:
            break
        await asyncio.sleep(0.05)
    assert await redis.zcard(keys.in_flight("chat", acct.uid)) == 0
    r = await client.post(CHAT, headers=acct.headers, json={"model": "m", "prompt": "after"})
    assert r.status_code == 200, r.text
    balance, total = await audit(app, acct.uid)
    assert balance == total


async def test_a_refused_charge_gives_its_in_flight_slot_back(
        client: httpx.AsyncClient, make_account: MakeAccount, app: Any) -> None:
    acct = await make_account(balance="0.00", keys=CHAT_KEYS)
    await limit(client, acct.uid, in_flight={"chat": 1})
    for _ in range(3):  # each is 402, never 429: the refused charge did not keep its slot
        r = await client.post(CHAT, headers=acct.headers, json={"model": "m", "prompt": "broke"})
        assert r.status_code == 402, r.text
    assert await app.state.sn.redis.zcard(keys.in_flight("chat", acct.uid)) == 0


async def test_a_leaked_in_flight_slot_expires(client: httpx.AsyncClient, make_account: MakeAccount,
                                               app: Any) -> None:
    acct = await make_account(keys=CHAT_KEYS)
    await limit(client, acct.uid, in_flight={"chat": 1})
    redis = app.state.sn.redis
    # A crash left a slot whose task never published a final status; its deadline has passed.
    t = int((await redis.time())[0])
    await redis.zadd(keys.in_flight("chat", acct.uid), {"crashed-job": t - 1})
    r = await client.post(CHAT, headers={**acct.headers, "Prefer": "respond-async"}, json={"model": "m", "prompt": "x"})
    assert r.status_code == 202, r.text
    assert await redis.zrange(keys.in_flight("chat", acct.uid), 0, -1) == [r.json()["job_id"].encode()]


async def test_a_full_pool_is_refused_before_an_image_is_fetched(
        client: httpx.AsyncClient, make_account: MakeAccount, app: Any) -> None:
    acct = await make_account()
    await limit(client, acct.uid, in_flight={"moderation": 1})
    redis = app.state.sn.redis
    t = int((await redis.time())[0])
    await redis.zadd(keys.in_flight("moderation", acct.uid), {"running-job": t + 600})
    # The URL would be refused by the SSRF guard (400) had the request got as far as fetching it.
    r = await client.post("/moderate", headers=acct.headers, json={"imageUrl": "http://127.0.0.1:9/x.png"})
    assert_limited(r)
    assert await charges(app, acct.uid) == 0


async def test_limits_can_be_switched_off_for_benchmarks(app: Any) -> None:
    from ingress.app import create_app

    off = create_app(app.state.sn.settings.model_copy(update={"limits_enabled": False}))
    async with off.router.lifespan_context(off):
        assert off.state.sn.limiter is None and off.state.sn.auth.limiter is None
