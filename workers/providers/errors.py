"""How a provider call can fail, and what the worker does about it.

    ProviderError
    ├── ProviderRetryable   connect error, timeout, 429, 5xx, OpenRouter's 200-with-5xx:
    │                       retried with backoff; if every try fails the task fails, refunded
    └── ProviderRejected    any other 4xx: the request or the user's key is at fault;
                            the task fails at once with the provider's own message, refunded
"""

from __future__ import annotations


class ProviderError(Exception):
    def __init__(self, provider: str, message: str, status: int | None = None) -> None:
        super().__init__(f"{provider}: {message}")
        self.provider = provider
        self.status = status
        self.message = message

    def __str__(self) -> str:
        code = f" ({self.status})" if self.status else ""
        return f"{self.provider}{code}: {self.message}"


class ProviderRetryable(ProviderError):
    def __init__(self, provider: str, message: str, status: int | None = None,
                 retry_after: float | None = None) -> None:
        super().__init__(provider, message, status)
        self.retry_after = retry_after


class ProviderRejected(ProviderError):
    pass


class ProviderStreamBroken(ProviderError):
    """A streamed task broke off. After its first chunk reached the client (``refund`` False) the
    task fails with the text received so far and keeps its charge, as the issue's rule says; a
    stream our own worker lost mid-way (``refund`` True: not the user's doing) is refunded."""

    def __init__(self, provider: str, message: str, output: object = None, *, refund: bool = False) -> None:
        super().__init__(provider, message)
        self.output = output
        self.refund = refund
