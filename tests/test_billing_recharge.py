"""Auto-recharge by the real billing pool (in-process worker) against localstripe."""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

import httpx

from tests.fixtures.stripe import DECLINED_AT_PAYMENT, CardAccount
from tests.helpers import CHAT, balanced, payments

KEYS = {"openrouter_key": "sk-or-v1-recharge"}


async def _wait_for(check: Any, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if await check():
            return
        await asyncio.sleep(0.05)
    raise AssertionError("condition not reached in time")


async def _recharges(app: Any, uid: str) -> list[Any]:
    return [p for p in await payments(app, uid) if p["kind"] == "auto_recharge"]


async def test_50_concurrent_calls_crossing_recharge_below_make_one_recharge(
        client: httpx.AsyncClient, card_account: CardAccount, chat_worker: Any, billing_worker: Any,
        app: Any) -> None:
    acct = await card_account(balance="1.00", keys=KEYS,
                              recharge={"enabled": True, "threshold": 10, "recharge_below": 0.5})
    tag = uuid.uuid4()
    rs = await asyncio.gather(*(client.post(CHAT, headers=acct.headers, json={"model": "m", "prompt": f"{tag} {i}"})
                                for i in range(50)))
    # $1.00 covers exactly the 50 calls: none waited on the card, none was refused.
    assert [r.status_code for r in rs] == [200] * 50

    async def recharged() -> bool:
        return any(p["status"] == "succeeded" for p in await _recharges(app, acct.uid))

    await _wait_for(recharged)
    await asyncio.sleep(1.0)  # room for a second recharge, if anything would make one
    [p] = await _recharges(app, acct.uid)
    assert p["amount_micros"] == 10_000_000 and p["payment_intent"].startswith("pi_")
    assert await balanced(app, acct.uid) == 10_000_000
    kinds = [h["kind"] for h in (await client.get("/billing-history", headers=acct.headers,
                                                  params={"limit": 100})).json()["history"]]
    assert kinds.count("auto_recharge") == 1 and kinds.count("charge") == 50


async def test_short_balance_is_402_at_once_and_the_pool_recharges(
        client: httpx.AsyncClient, card_account: CardAccount, billing_worker: Any, app: Any) -> None:
    # $0.01 is not below the default floor ($0.01) but cannot pay for a $0.02 call.
    acct = await card_account(balance="0.01", keys=KEYS, recharge={"enabled": True, "threshold": 20})
    r = await client.post(CHAT, headers=acct.headers, json={"model": "m", "prompt": "short"})
    assert r.status_code == 402 and "Insufficient balance" in r.json()["error"]

    async def recharged() -> bool:
        return any(p["status"] == "succeeded" for p in await _recharges(app, acct.uid))

    await _wait_for(recharged)
    assert await balanced(app, acct.uid) == 20_010_000


async def test_failed_recharges_are_retried_then_auto_recharge_switches_off_and_says_why(
        client: httpx.AsyncClient, card_account: CardAccount, chat_worker: Any, billing_worker: Any,
        app: Any) -> None:
    acct = await card_account(DECLINED_AT_PAYMENT, balance="0.05", keys=KEYS,
                              recharge={"enabled": True, "recharge_below": 0.04})
    r = await client.post(CHAT, headers=acct.headers, json={"model": "m", "prompt": f"last {uuid.uuid4()}"})
    assert r.status_code == 200

    async def off() -> bool:
        r = await client.get("/billing-threshold", headers=acct.headers)
        return r.json()["enabled"] is False

    await _wait_for(off)
    view = (await client.get("/billing-threshold", headers=acct.headers)).json()
    attempts = app.state.sn.settings.recharge_max_attempts
    assert view["failures"] == attempts
    assert view["disabled_reason"] == (f"Auto-recharge switched off after {attempts} failed attempts: "
                                       "Card declined: Your card was declined.")
    await asyncio.sleep(0.5)
    assert [p["status"] for p in await _recharges(app, acct.uid)] == ["failed"] * attempts
    assert await balanced(app, acct.uid) == 30_000
    # Switched off, a short balance enqueues nothing more; switching it on again clears the record.
    r = await client.post("/billing-threshold", headers=acct.headers, json={"enabled": True})
    assert r.json()["failures"] == 0 and r.json()["disabled_reason"] is None
