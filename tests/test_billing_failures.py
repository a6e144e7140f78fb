"""Stripe failing (unreachable, 500, slow) and our process dying mid-payment: never a second
payment, never a second credit, never a lost one."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from storage.embedded import free_port
from tests.fixtures.servers import ServerThread
from tests.fixtures.stripe import CardAccount, StripeAdmin, post_event
from tests.helpers import balanced, payments


def _broken_stripe(mode: str) -> Starlette:
    async def anything(request: Request) -> JSONResponse:
        if mode == "timeout":
            await asyncio.sleep(3)
        return JSONResponse({"error": {"type": "api_error", "message": "Stripe is having a bad day"}},
                            status_code=500)

    return Starlette(routes=[Route("/{path:path}", anything, methods=["GET", "POST", "DELETE"])])


@contextlib.asynccontextmanager
async def gateway_with_stripe_at(url: str) -> AsyncIterator[httpx.AsyncClient]:
    """The same gateway (same database) with Stripe somewhere else."""
    from ingress.app import create_app
    from jobs.settings import Settings

    app = create_app(Settings(SYNCNODE_STRIPE_BASE_URL=url, stripe_timeout_seconds=0.5))
    async with app.router.lifespan_context(app), httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://gateway.test", timeout=30) as c:
        yield c


@pytest.mark.parametrize("mode", ["unreachable", "500", "timeout"])
async def test_stripe_failing_is_502_then_the_same_key_pays_once(
        mode: str, client: httpx.AsyncClient, card_account: CardAccount, app: Any) -> None:
    acct = await card_account()
    headers = {**acct.headers, "Idempotency-Key": str(uuid.uuid4())}
    with contextlib.ExitStack() as stack:
        if mode == "unreachable":
            url = f"http://127.0.0.1:{free_port()}"
        else:
            url = stack.enter_context(ServerThread(_broken_stripe(mode))).url
        async with gateway_with_stripe_at(url) as down:
            r = await down.post("/topup_card", headers=headers, json={"amount": 10})
    assert r.status_code == 502, r.text
    assert "Stripe could not be reached" in r.json()["error"]
    [p] = await payments(app, acct.uid)
    assert p["status"] == "pending" and p["payment_intent"] is None and p["lease_until"] is None
    assert await balanced(app, acct.uid) == 5_000_000
    # Stripe is back: the client retries with the same key and the one payment goes through.
    rs = await asyncio.gather(*(client.post("/topup_card", headers=headers, json={"amount": 10}) for _ in range(3)))
    assert all(r.status_code == 200 for r in rs), [r.text for r in rs]
    assert len({r.json()["payment_intent"] for r in rs}) == 1
    assert [p["status"] for p in await payments(app, acct.uid)] == ["succeeded"]
    assert await balanced(app, acct.uid) == 15_000_000


async def _crash_after_stripe_success(app: Any, uid: str) -> str:
    """What POST /topup_card does up to Stripe's success, in a process that then dies: the row
    (its lease already run out), the stored PaymentIntent, the confirm. No credit."""
    from billing.payments import ensure_intent
    from storage.payments import PaymentRepository

    b = app.state.sn.billing
    row = await PaymentRepository(b.db).start_topup(uid, 10_000_000, None, 0)
    assert row is not None
    pi = await ensure_intent(b, row)
    assert (await b.stripe.confirm_off_session(pi.id)).status == "succeeded"
    return str(pi.id)


async def test_crash_after_stripe_success_before_the_credit_is_credited_once_by_reconciliation(
        client: httpx.AsyncClient, card_account: CardAccount, stripe_admin: StripeAdmin, app: Any) -> None:
    from billing.reconcile import reconcile

    acct = await card_account()
    b = app.state.sn.billing
    pi_id = await _crash_after_stripe_success(app, acct.uid)
    assert await balanced(app, acct.uid) == 5_000_000

    await reconcile(b, older_than_s=0)
    assert await balanced(app, acct.uid) == 15_000_000
    assert [p["status"] for p in await payments(app, acct.uid)] == ["succeeded"]
    await reconcile(b, older_than_s=0)
    r = await post_event(client, "payment_intent.succeeded", await stripe_admin.intent(pi_id))
    assert r.json()["outcome"] == "already credited"
    assert await balanced(app, acct.uid) == 15_000_000
    history = (await client.get("/billing-history", headers=acct.headers)).json()["history"]
    assert [h["kind"] for h in history].count("topup") == 1


async def test_crash_before_the_confirm_cancels_the_intent_and_charges_nothing(
        card_account: CardAccount, stripe_admin: StripeAdmin, app: Any) -> None:
    from billing.payments import ensure_intent
    from billing.reconcile import reconcile
    from storage.payments import PaymentRepository

    acct = await card_account()
    b = app.state.sn.billing
    repo = PaymentRepository(b.db)
    created = await repo.start_topup(acct.uid, 10_000_000, None, 0)
    assert created is not None
    pi = await ensure_intent(b, created)
    never_created = await repo.start_topup(acct.uid, 20_000_000, None, 0)
    assert never_created is not None
    await reconcile(b, older_than_s=0)
    assert (await stripe_admin.intent(pi.id))["status"] == "canceled"
    by_id = {p["id"]: p for p in await payments(app, acct.uid)}
    assert by_id[created["id"]]["status"] == "failed" and by_id[never_created["id"]]["status"] == "failed"
    assert await balanced(app, acct.uid) == 5_000_000


def _answer_lost_on_confirm(stripe_url: str) -> Starlette:
    """Stripe itself, except that the answer to a confirm is lost after Stripe acted on it."""

    async def proxy(request: Request) -> Response:
        async with httpx.AsyncClient(base_url=stripe_url) as c:
            r = await c.request(request.method, request.url.path, params=request.query_params,
                                content=await request.body(),
                                headers={k: v for k, v in request.headers.items() if k.lower() != "host"})
        if request.url.path.endswith("/confirm"):
            return JSONResponse({"error": {"type": "api_error", "message": "connection reset"}}, status_code=500)
        return Response(r.content, status_code=r.status_code, media_type="application/json")

    return Starlette(routes=[Route("/{path:path}", proxy, methods=["GET", "POST", "DELETE"])])


async def test_confirm_answer_lost_after_stripe_charged_then_the_same_key_credits_once(
        client: httpx.AsyncClient, card_account: CardAccount, stripe_admin: StripeAdmin, app: Any) -> None:
    acct = await card_account()
    headers = {**acct.headers, "Idempotency-Key": str(uuid.uuid4())}
    with ServerThread(_answer_lost_on_confirm(stripe_admin.url)) as flaky:
        async with gateway_with_stripe_at(flaky.url) as down:
            r = await down.post("/topup_card", headers=headers, json={"amount": 10})
    assert r.status_code == 502
    [p] = await payments(app, acct.uid)
    # Stripe took the money; we do not know it yet, and credit nothing.
    assert (await stripe_admin.intent(p["payment_intent"]))["status"] == "succeeded"
    assert p["status"] == "pending" and await balanced(app, acct.uid) == 5_000_000
    r = await client.post("/topup_card", headers=headers, json={"amount": 10})
    assert r.status_code == 200 and r.json()["payment_intent"] == p["payment_intent"]
    assert len(await payments(app, acct.uid)) == 1
    assert await balanced(app, acct.uid) == 15_000_000


async def test_authentication_required_error_as_real_stripe_sends_it_is_402_with_client_secret(
        card_account: CardAccount, app: Any) -> None:
    """Real Stripe refuses an off-session 3-D Secure charge with an error (localstripe does not)."""
    import respx

    acct = await card_account()
    fake = "http://stripe.respx.test"
    intent = {"id": "pi_3dsrespx", "object": "payment_intent", "status": "requires_confirmation",
              "client_secret": "pi_3dsrespx_secret_abc", "amount": 1000, "currency": "usd"}
    refusal = {"error": {"type": "card_error", "code": "authentication_required", "decline_code":
                         "authentication_required", "message": "This payment requires authentication.",
                         "payment_intent": {**intent, "status": "requires_payment_method"}}}
    async with gateway_with_stripe_at(fake) as gw:
        with respx.mock(base_url=fake, assert_all_called=True) as mock:
            mock.post("/v1/payment_intents").respond(200, json=intent)
            mock.post("/v1/payment_intents/pi_3dsrespx/confirm").respond(402, json=refusal)
            r = await gw.post("/topup_card", headers=acct.headers, json={"amount": 10})
    assert r.status_code == 402
    body = r.json()
    assert "3-D Secure" in body["error"] and body["client_secret"] == "pi_3dsrespx_secret_abc"
    assert [p["status"] for p in await payments(app, acct.uid)] == ["requires_action"]
    assert await balanced(app, acct.uid) == 5_000_000


async def test_the_billing_workers_cron_reconciles_a_crashed_payment_once(
        card_account: CardAccount, app: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """The same crash, settled by the reconcile cron as the billing pool runs it: its
    WorkerSettings' cron job, on a real worker whose on_startup built the Stripe client."""
    from jobs.names import BILLING_RECONCILE
    from tests.fixtures.workers import start_inprocess_worker, stop_inprocess_worker
    from workers.settings import BillingWorker

    [cron_job] = [c for c in BillingWorker.cron_jobs if c.name == BILLING_RECONCILE]  # type: ignore[attr-defined]
    assert cron_job.run_at_startup and cron_job.unique
    acct = await card_account()
    await _crash_after_stripe_success(app, acct.uid)
    monkeypatch.setattr(app.state.sn.settings, "reconcile_after_seconds", 0.0)  # the worker's settings too
    worker, task = await start_inprocess_worker("billing")
    try:
        for _ in range(100):  # run_at_startup: the first round runs as the worker starts
            if await balanced(app, acct.uid) == 15_000_000:
                break
            await asyncio.sleep(0.1)
        assert [p["status"] for p in await payments(app, acct.uid)] == ["succeeded"]
        # A further round (as the cron's next tick) credits nothing more.
        assert isinstance(await cron_job.coroutine(worker.ctx), dict)
    finally:
        await stop_inprocess_worker(worker, task)
    assert await balanced(app, acct.uid) == 15_000_000
