"""GET/POST /admin/limits: one account's limits, overridden per account (admin token)."""

from __future__ import annotations

from typing import Annotated, Any, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field
from starlette.requests import Request
from starlette.responses import Response

from ingress.accounts import _require_admin
from ingress.api_spec import api
from ingress.body import read_json
from ingress.limits import GROUPS, IN_FLIGHT_POOLS, effective
from ingress.responses import JSON
from ingress.state import AppState, state
from jobs.errors import BadRequest, NotFound
from storage.accounts import AccountRepository
from storage.limits import LimitsRepository

Rate = Annotated[float, Field(ge=0, le=1_000_000)]
Count = Annotated[int, Field(ge=0, le=1_000_000)]
# The names are part of the schema (propertyNames), so the document refuses what the server does.
Group = Literal["chat", "media", "moderation", "v1", "read", "account"]
Pool = Literal["chat", "media", "moderation"]


class LimitsUpdate(BaseModel):
    """What to change; a null value removes that override (the setting applies again), 0 means
    no limit. Route groups: chat, media, moderation, v1, read, account; pools: chat, media,
    moderation."""

    model_config = ConfigDict(extra="forbid")

    uid: str = Field(min_length=1, max_length=200)
    rate: dict[Group, Rate | None] = {}
    burst: dict[Group, Annotated[float, Field(ge=1, le=1_000_000)] | None] = {}
    in_flight: dict[Pool, Count | None] = {}


class LimitsQuery(BaseModel):
    uid: str = Field(min_length=1, max_length=200)


class LimitsAnswer(BaseModel):
    uid: str
    overrides: dict[str, dict[str, float]]
    limits: dict[str, Any] = Field(description="What applies now: the settings with the overrides on top")


assert get_args(Group) == GROUPS and get_args(Pool) == IN_FLIGHT_POOLS


def _check_names(body: LimitsUpdate) -> None:
    for section, names, allowed in (("rate", body.rate, GROUPS), ("burst", body.burst, GROUPS),
                                    ("in_flight", body.in_flight, IN_FLIGHT_POOLS)):
        for name in names:
            if name not in allowed:
                raise BadRequest(f"Invalid {section}.{name}: one of {', '.join(allowed)}")


async def _answer(st: AppState, uid: str, overrides: dict[str, dict[str, float]]) -> Response:
    return JSON({"uid": uid, "overrides": overrides, "limits": effective(st.settings, overrides).to_json()})


@api("Set an account's limit overrides (admin token)", tags=("admin",), auth="admin", body=LimitsUpdate,
     ok={200: LimitsAnswer}, errors=(400, 401, 403, 404, 413))
async def post_limits(request: Request) -> Response:
    st = state(request)
    _require_admin(st, request)
    body = LimitsUpdate.model_validate(await read_json(request, 64 << 10))
    _check_names(body)
    changes: dict[str, dict[str, float | None]] = {
        "rate": {str(k): v for k, v in body.rate.items()}, "burst": {str(k): v for k, v in body.burst.items()},
        "in_flight": {k: None if v is None else float(v) for k, v in body.in_flight.items()}}
    merged = await LimitsRepository(st.db).merge(body.uid, changes)
    if merged is None:
        raise NotFound("Unknown uid")
    if st.limiter is not None:
        st.limiter.forget(body.uid)
    return await _answer(st, body.uid, merged)


@api("An account's limits and overrides (admin token)", tags=("admin",), auth="admin", query=LimitsQuery,
     ok={200: LimitsAnswer}, errors=(400, 401, 403, 404))
async def get_limits(request: Request) -> Response:
    st = state(request)
    _require_admin(st, request)
    uid = request.query_params.get("uid")
    if not uid:
        raise BadRequest("Missing uid parameter")
    if not await AccountRepository(st.db).exists(uid):
        raise NotFound("Unknown uid")
    return await _answer(st, uid, await LimitsRepository(st.db).overrides(uid))
