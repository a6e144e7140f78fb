"""Run one worker of a pool: ``syncnode worker <pool>`` ends here.

The ``syncnode`` command lives in ``ingress/cli.py``, and the ingress imports nothing from
``workers/`` (tests/test_layers.py): it reaches this module by its dotted path,
``WORKER_ENTRY`` there, the way arq's own CLI loads ``workers.settings.ChatWorker``.
"""

from __future__ import annotations

from typing import Any

import uvloop
from arq.worker import get_kwargs

from jobs import logs
from jobs.settings import get_settings
from workers.runtime.worker import SyncNodeWorker
from workers.settings import POOL_SETTINGS


def pool_worker(pool: str, **overrides: Any) -> SyncNodeWorker:
    """The worker of ``pool`` as ``syncnode worker`` builds it; ``overrides`` replace any of
    arq's ``Worker`` arguments (tests pass ``handle_signals=False``)."""
    s = get_settings()
    kwargs: dict[str, Any] = {**get_kwargs(POOL_SETTINGS[pool]), "pool_name": pool,
                              "lease_seconds": s.job_lease_seconds,
                              "shutdown_grace_seconds": s.shutdown_grace_seconds, **overrides}
    return SyncNodeWorker(**kwargs)


def run_pool(pool: str, *, burst: bool = False) -> int:
    """Run a worker of ``pool`` until it is stopped (or, with ``burst``, its queue is empty)."""
    s = get_settings()
    logs.setup(s.log_format, s.log_level)
    uvloop.install()
    pool_worker(pool, burst=burst).run()
    return 0
