"""localstripe (a stateful Stripe fake from PyPI) on 127.0.0.1, in memory.

Its own command binds every interface and pickles its store to /tmp after each change; this
serves the same app on loopback with the pickling switched off. Also taught here: the
``off_session`` flag on PaymentIntent confirm, which Stripe accepts and localstripe rejects, and
the ``amount_received`` of a PaymentIntent, which Stripe reports and localstripe does not.

    python -m tests.fakes.stripe_server [--port 8420] [--webhook URL --secret whsec_…]
"""

from __future__ import annotations

import argparse
import asyncio
import threading
from typing import Any

from aiohttp import web

from storage.embedded import free_port

_patched = False
# PaymentIntent id → cents Stripe reports as received (tests only).
RECEIVED: dict[str, int] = {}


def _patch() -> Any:
    global _patched
    from localstripe import resources

    if not _patched:
        resources.store.dump_to_disk = lambda *a, **k: None
        # Stripe's amount_received, which localstripe lacks: the amount once it succeeded, or
        # what a test put in RECEIVED (to make Stripe report a different amount than asked).
        resources.PaymentIntent.amount_received = property(
            lambda pi: RECEIVED.get(pi.id, pi.amount) if pi.status == "succeeded" else 0)
        confirm = resources.PaymentIntent._api_confirm

        def confirm_off_session(id: str, payment_method: Any = None, off_session: Any = None, **kw: Any) -> Any:
            return confirm(id, payment_method=payment_method, **kw)

        # Before localstripe.server is imported: it builds its routes from this table.
        resources.PaymentIntent._api_confirm = staticmethod(confirm_off_session)
        for i, (method, url, _fn) in enumerate(resources.extra_apis):
            if url == "/v1/payment_intents/{id}/confirm":
                resources.extra_apis[i] = (method, url, confirm_off_session)
        _patched = True
    from localstripe import server

    return server.app


class LocalStripe:
    """localstripe served from a thread with its own event loop (for the test session)."""

    def __init__(self, port: int | None = None) -> None:
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._loop = asyncio.new_event_loop()
        self._runner: web.AppRunner | None = None
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)

        async def up() -> None:
            self._runner = web.AppRunner(_patch(), access_log=None)
            await self._runner.setup()
            await web.TCPSite(self._runner, "127.0.0.1", self.port).start()

        self._loop.run_until_complete(up())
        self._ready.set()
        self._loop.run_forever()

    def start(self) -> None:
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("localstripe did not start")

    def stop(self) -> None:
        async def down() -> None:
            if self._runner is not None:
                await self._runner.cleanup()
            # Webhook sends still in flight: ended here, not destroyed pending with the loop.
            rest = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for t in rest:
                t.cancel()
            await asyncio.gather(*rest, return_exceptions=True)

        asyncio.run_coroutine_threadsafe(down(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
        if not self._thread.is_alive():
            self._loop.close()


def main() -> None:
    p = argparse.ArgumentParser(description="localstripe on 127.0.0.1, in memory")
    p.add_argument("--port", type=int, default=8420)
    p.add_argument("--webhook", help="URL localstripe posts signed events to (the gateway's /webhooks/stripe)")
    p.add_argument("--secret", default="whsec_local", help="the webhook signing secret (STRIPE_WEBHOOK_SECRET)")
    args = p.parse_args()
    app = _patch()
    if args.webhook:
        from localstripe.webhooks import register_webhook

        register_webhook("syncnode", args.webhook, args.secret, None)
    print(f"localstripe on http://127.0.0.1:{args.port} (STRIPE_BASE_URL); any sk_test_… key works")
    web.run_app(app, host="127.0.0.1", port=args.port, print=None)


if __name__ == "__main__":
    main()
