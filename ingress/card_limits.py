"""How often one account, or one client address, may save a card or start a card setup.

Saving a card asks Stripe whether the card is good: unlimited, that is a card-testing service
for stolen numbers. Every attempt counts (declines above all), counted before Stripe is asked:
INCR first and compare after, so concurrent attempts cannot all pass one check. Fixed windows
(``SYNCNODE_CARD_LIMIT_WINDOW_SECONDS``): the TTL is set by the first attempt only.
"""

from __future__ import annotations

from starlette.requests import Request

from ingress.state import AppState
from jobs import keys
from jobs.errors import RateLimited

_WHAT = {"attach": "card saves", "setup": "card setups"}


def _limits(st: AppState, action: str) -> tuple[int, int]:
    s = st.settings
    if action == "attach":
        return s.card_attach_max_per_account, s.card_attach_max_per_address
    return s.card_setup_max_per_account, s.card_setup_max_per_address


async def count_card_attempt(st: AppState, request: Request, uid: str, action: str) -> None:
    """Count one attempt of ``action`` ("attach" or "setup"); 429 with Retry-After over a limit."""
    address = request.client.host if request.client else "unknown"
    per_account, per_address = _limits(st, action)
    window = st.settings.card_limit_window_seconds
    scopes = [(keys.card_attempts(action, "account", uid), per_account),
              (keys.card_attempts(action, "address", address), per_address)]
    async with st.redis.pipeline(transaction=True) as p:
        for key, _ in scopes:
            p.incr(key)
            p.expire(key, window, nx=True)
        for key, _ in scopes:
            p.ttl(key)
        got = await p.execute()
    counts, ttls = got[0:4:2], got[4:]
    for (_, limit), count, ttl in zip(scopes, counts, ttls, strict=True):
        if int(count) > limit:
            wait = max(1, int(ttl))
            raise RateLimited(f"Too many {_WHAT[action]}: at most {limit} in {_span(window)} from one account "
                              f"or address; try again in {wait} s", headers={"Retry-After": str(wait)})


def _span(seconds: int) -> str:
    return f"{seconds // 3600} h" if seconds >= 3600 and seconds % 3600 == 0 else f"{seconds} s"
