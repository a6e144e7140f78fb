"""GET /metrics: the ingress's own request metrics plus what workers flushed to Redis.

A scrape costs one Redis pipeline (``jobs.metrics.snapshot``) and, at most once per
``SYNCNODE_METRICS_LEDGER_CACHE_SECONDS`` across every ingress, one aggregate over the ledger.
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from starlette.requests import Request
from starlette.responses import Response

from ingress.api_spec import Raw, api
from ingress.state import AppState, state
from jobs.errors import Unauthorized
from jobs.metrics import BUCKETS, DURATION, JOBS, PROVIDER_ERRORS, WAIT, Snapshot, cache_ledger, snapshot
from jobs.settings import to_dollars
from storage.ledger import LedgerRepository

log = logging.getLogger("syncnode.metrics")

REGISTRY = CollectorRegistry()
REQUESTS = Counter("syncnode_http_requests", "HTTP requests by route and status",
                   ["route", "method", "status"], registry=REGISTRY)
LATENCY = Histogram("syncnode_http_request_duration_seconds", "HTTP request latency by route",
                    ["route"], registry=REGISTRY,
                    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 10, 60))
# Incremented by the per-account limits (429) with the route group or pool the limit is on.
RATE_LIMITED = Counter("syncnode_rate_limited", "Requests refused by a per-account limit (429)",
                       ["group"], registry=REGISTRY)


def rate_limited(group: str) -> None:
    RATE_LIMITED.labels(group).inc()


def _split(field: str, n: int) -> list[str] | None:
    parts = field.split("|")
    return parts if len(parts) == n else None


def _histogram(name: str, doc: str, labels: list[str], fields: dict[str, float]) -> HistogramMetricFamily:
    """Cumulative buckets from the per-bucket counts workers flush ("<labels>|<le>", "<labels>|sum")."""
    h = HistogramMetricFamily(name, doc, labels=labels)
    series = sorted({f.rsplit("|", 1)[0] for f in fields if _split(f, len(labels) + 1)})
    for s in series:
        acc, buckets = 0.0, list[tuple[str, float]]()
        for le in [*map(str, BUCKETS), "+Inf"]:
            acc += fields.get(f"{s}|{le}", 0.0)
            buckets.append((le, acc))
        h.add_metric(s.split("|"), buckets, fields.get(f"{s}|sum", 0.0))
    return h


class _Snapshot(Collector):
    def __init__(self, snap: Snapshot) -> None:
        self.snap = snap

    def collect(self) -> Iterator[Metric]:
        yield from self._queues()
        c = self.snap.counters
        jobs = CounterMetricFamily("syncnode_jobs", "Jobs finished by workers", labels=["pool", "function", "outcome"])
        for field, n in c[JOBS].items():
            if parts := _split(field, 3):
                jobs.add_metric(parts, n)
        yield jobs
        errs = CounterMetricFamily("syncnode_provider_errors",
                                   "Provider call failures by HTTP status (or transport error when no answer)",
                                   labels=["provider", "status"])
        for field, n in c[PROVIDER_ERRORS].items():
            if parts := _split(field, 2):
                errs.add_metric(parts, n)
        yield errs
        yield _histogram("syncnode_job_duration_seconds", "Job run time per pool and function",
                         ["pool", "function"], c[DURATION])
        yield _histogram("syncnode_job_wait_seconds", "Time a job waited on its queue after it was due",
                         ["pool"], c[WAIT])
        yield from self._ledger()

    def _queues(self) -> Iterator[Metric]:
        fams = {
            "depth": GaugeMetricFamily("syncnode_queue_depth", "Jobs queued, deferred or running, per pool",
                                       labels=["pool"]),
            "deferred": GaugeMetricFamily("syncnode_queue_deferred", "Jobs scheduled for later, per pool",
                                          labels=["pool"]),
            "oldest_wait_s": GaugeMetricFamily("syncnode_queue_oldest_age_seconds",
                                               "How long the longest-waiting due job (not running) has waited",
                                               labels=["pool"]),
            "dead": GaugeMetricFamily("syncnode_dead_letters", "Jobs in the pool's dead-letter queue",
                                      labels=["pool"]),
        }
        for pool, stats in self.snap.pools.items():
            for attr, fam in fams.items():
                fam.add_metric([pool], getattr(stats, attr))
        yield from fams.values()

    def _ledger(self) -> Iterator[Metric]:
        if self.snap.ledger is None:
            return
        rows = CounterMetricFamily("syncnode_ledger_entries", "Ledger rows by kind", labels=["kind"])
        amount = GaugeMetricFamily("syncnode_ledger_amount_dollars", "Sum of ledger amounts by kind (signed)",
                                   labels=["kind"])
        for kind, (n, micros) in sorted(self.snap.ledger.items()):
            rows.add_metric([kind], n)
            amount.add_metric([kind], to_dollars(micros))
        yield rows
        yield amount


def _check_token(request: Request, token: str) -> None:
    header = request.headers.get("authorization", "")
    given = header[7:].strip() if header[:7].lower() == "bearer " else ""
    if not hmac.compare_digest(given.encode(), token.encode()):
        raise Unauthorized("GET /metrics needs 'Authorization: Bearer <SYNCNODE_METRICS_TOKEN>'")


async def _with_ledger(st: AppState, snap: Snapshot) -> Snapshot:
    if snap.ledger is not None:
        return snap
    try:
        totals = await LedgerRepository(st.db).totals_by_kind()
        await cache_ledger(st.redis, totals, st.settings.metrics_ledger_cache_seconds)
    except Exception:  # the queue metrics are still worth answering with
        log.warning("ledger totals for /metrics failed", exc_info=True)
        return snap
    return Snapshot(snap.counters, snap.pools, totals)


@api("Prometheus metrics", tags=("operations",), auth="none",
     ok={200: Raw("text/plain", {"type": "string"}, "Prometheus text exposition")}, errors=())
async def metrics(request: Request) -> Response:
    st = state(request)
    # Queue depths and provider error rates tell an outsider how busy and how healthy we are.
    token = st.settings.metrics_token.get_secret_value() if st.settings.metrics_token else ""
    if token:  # an empty SYNCNODE_METRICS_TOKEN= is "unset", never "any request passes"
        _check_token(request, token)
    snap = await _with_ledger(st, await snapshot(st.redis))
    reg = CollectorRegistry()
    reg.register(_Snapshot(snap))
    body = generate_latest(REGISTRY) + generate_latest(reg)
    return Response(body, media_type="text/plain; version=0.0.4; charset=utf-8")
