"""How a provider call retries, as one value: the settings that travel together travel as one
frozen object (httpx's ``Timeout`` is the model), built from ``Settings`` in one place.

``call`` (``workers/providers/http.py``) is the loop that follows it: exponential backoff with
full jitter up to ``MAX_BACKOFF_S``, or the provider's Retry-After when it sends one.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from jobs.settings import Settings

# The longest backoff ``call`` waits between two tries when the provider names no Retry-After.
MAX_BACKOFF_S = 8.0


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    # Tries after the first; 0 never retries.
    max_retries: int
    # A Retry-After longer than this fails the call now rather than later.
    retry_after_cap: float
    # No retry starts this many seconds after the first try did: the job must end (and refund)
    # before the queue's own timeout, which arq treats as final, cuts it off. None: no limit.
    budget: float | None = None

    @classmethod
    def provider(cls, s: Settings) -> RetryPolicy:
        """Every provider call's: ``provider_max_retries``, Retry-After up to its cap."""
        return cls(s.provider_max_retries, s.provider_retry_after_cap_seconds)

    @classmethod
    def chat(cls, s: Settings) -> RetryPolicy:
        """A chat or embeddings call: as ``provider``, within the chat job's timeout, leaving
        the last try a whole read timeout (and 10 s) before it."""
        return replace(cls.provider(s), budget=max(10.0, s.chat_job_timeout_seconds - s.provider_read_timeout - 10))

    def retries(self, n: int) -> RetryPolicy:
        return replace(self, max_retries=n)

    @property
    def longest_wait(self) -> float:
        """The longest ``call`` sleeps between two tries: a backoff, or a Retry-After within the cap."""
        return max(MAX_BACKOFF_S, self.retry_after_cap)

    def longest_call(self, one_try: float) -> float:
        """The most a call can take, every try and wait included, when one try takes ``one_try``."""
        return (self.max_retries + 1) * one_try + self.max_retries * self.longest_wait
