"""GET /usage: what the home page charts — balance, net spend per day, task counts by status."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from ingress.api_models import Usage
from ingress.api_requests import UsageQuery
from ingress.api_spec import READ, api
from ingress.params import int_param
from ingress.responses import JSON
from ingress.state import state
from jobs.errors import NotFound
from jobs.results import PUBLIC_STATUS
from jobs.settings import to_dollars
from storage.accounts import AccountRepository
from storage.web import UsageRepository


@api("Balance, net spend per day and task counts by status", tags=("keys",), auth="bearer", query=UsageQuery,
     ok={200: Usage}, errors=READ)
async def usage(request: Request) -> Response:
    st = state(request)
    who = await st.auth.principal(request, request.query_params.get("uid"), public=False)
    days = int_param(request, "days", 30, 1, 366)
    balance = await AccountRepository(st.db).balance(who.uid)
    if balance is None:
        raise NotFound("Unknown uid")
    repo = UsageRepository(st.db)
    counts: dict[str, int] = dict.fromkeys(sorted(set(PUBLIC_STATUS.values())), 0)
    for status, n in (await repo.counts_by_status(who.uid)).items():
        counts[PUBLIC_STATUS[status]] += n
    spend = [{"date": r["day"].isoformat(), "spend": to_dollars(r["spend_micros"])}
             for r in await repo.spend_per_day(who.uid, days)]
    return JSON({"uid": who.uid, "balance": to_dollars(balance), "spend_per_day": spend, "tasks_by_status": counts})
