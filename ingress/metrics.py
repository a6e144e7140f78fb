"""GET /metrics: the ingress's own request metrics plus what workers flushed to Redis."""

from __future__ import annotations

import hmac
import time
from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ingress.api_spec import Raw, api
from ingress.state import state
from jobs import keys
from jobs.errors import Unauthorized
from jobs.metrics import BUCKETS, DURATION, JOBS, PROVIDER_ERRORS, snapshot

REGISTRY = CollectorRegistry()
REQUESTS = Counter("syncnode_http_requests", "HTTP requests by route and status",
                   ["route", "method", "status"], registry=REGISTRY)
LATENCY = Histogram("syncnode_http_request_duration_seconds", "HTTP request latency by route",
                    ["route"], registry=REGISTRY,
                    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 10, 60))


class RequestMetrics:
    """Pure ASGI middleware: counts every response by its route template, not its raw path."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            route = getattr(scope.get("route"), "path", "unmatched")
            REQUESTS.labels(route, scope["method"], str(status)).inc()
            LATENCY.labels(route).observe(time.perf_counter() - start)


class _Snapshot(Collector):
    def __init__(self, depths: dict[str, int], snap: dict[str, dict[str, float]]) -> None:
        self.depths, self.snap = depths, snap

    def collect(self) -> Iterator[Metric]:
        g = GaugeMetricFamily("syncnode_queue_depth", "Jobs waiting or running, per pool", labels=["pool"])
        for pool, depth in self.depths.items():
            g.add_metric([pool], depth)
        yield g
        jobs = CounterMetricFamily("syncnode_jobs", "Jobs finished by workers",
                                   labels=["pool", "function", "outcome"])
        for field, n in self.snap[JOBS].items():
            jobs.add_metric(field.split("|"), n)
        yield jobs
        errs = CounterMetricFamily("syncnode_provider_errors", "Provider call failures",
                                   labels=["provider", "kind"])
        for field, n in self.snap[PROVIDER_ERRORS].items():
            errs.add_metric(field.split("|"), n)
        yield errs
        yield from self._durations()

    def _durations(self) -> Iterator[Metric]:
        h = HistogramMetricFamily("syncnode_job_duration_seconds", "Job run time per pool", labels=["pool"])
        d = self.snap[DURATION]
        pools = {f.split("|")[0] for f in d}
        for pool in sorted(pools):
            acc, buckets = 0.0, list[tuple[str, float]]()
            for le in [*map(str, BUCKETS), "+Inf"]:
                acc += d.get(f"{pool}|{le}", 0.0)
                buckets.append((le, acc))
            h.add_metric([pool], buckets, d.get(f"{pool}|sum", 0.0))
        yield h


def _check_token(request: Request, token: str) -> None:
    header = request.headers.get("authorization", "")
    given = header[7:].strip() if header[:7].lower() == "bearer " else ""
    if not hmac.compare_digest(given.encode(), token.encode()):
        raise Unauthorized("GET /metrics needs 'Authorization: Bearer <SYNCNODE_METRICS_TOKEN>'")


@api("Prometheus metrics", tags=("operations",), auth="none",
     ok={200: Raw("text/plain", {"type": "string"}, "Prometheus text exposition")}, errors=())
async def metrics(request: Request) -> Response:
    st = state(request)
    # Queue depths and provider error rates tell an outsider how busy and how healthy we are.
    token = st.settings.metrics_token.get_secret_value() if st.settings.metrics_token else ""
    if token:  # an empty SYNCNODE_METRICS_TOKEN= is "unset", never "any request passes"
        _check_token(request, token)
    async with st.redis.pipeline(transaction=False) as pipe:
        for pool in keys.POOLS:
            pipe.zcard(keys.queue(pool))
        depths: list[Any] = await pipe.execute()
    snap = await snapshot(st.redis)
    reg = CollectorRegistry()
    reg.register(_Snapshot(dict(zip(keys.POOLS, map(int, depths), strict=True)), snap))
    body = generate_latest(REGISTRY) + generate_latest(reg)
    return Response(body, media_type="text/plain; version=0.0.4; charset=utf-8")
