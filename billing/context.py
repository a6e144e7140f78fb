"""What billing code runs with, in the ingress and in the billing pool alike."""

from __future__ import annotations

from dataclasses import dataclass

import asyncpg

from billing.client import StripeGateway
from jobs.queue import JobQueue
from jobs.settings import Settings


@dataclass(slots=True)
class Billing:
    settings: Settings
    db: asyncpg.Pool
    stripe: StripeGateway
    queue: JobQueue

    @property
    def lease_seconds(self) -> float:
        # Longer than every Stripe request one drive of a payment makes (create, confirm, retrieve).
        return 4 * self.settings.stripe_timeout_seconds + 10
