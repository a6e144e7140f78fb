"""How a provider call can fail, and what the worker does about it.

    ProviderError
    ├── ProviderRetryable   connect error, timeout, 429, 5xx, OpenRouter's 200-with-5xx:
    │                       retried with backoff; if every try fails the task fails, refunded
    └── ProviderRejected    any other 4xx: the request or the user's key is at fault;
                            the task fails at once with the provider's own message, refunded
"""

from __future__ import annotations

# The longest provider ``code`` / ``param`` passed on. OpenAI's are short identifiers
# ("model_not_found", "messages[0].content"); a longer one is not one a client branches on.
MAX_FIELD_CHARS = 100


def error_field(value: object) -> str | None:
    """A provider error's ``code`` or ``param`` as we pass it on to our /v1 clients, or None.

    Only a short printable string: these reach clients verbatim (``e.code == "model_not_found"``),
    so anything else the provider put there (OpenRouter's numeric codes, an object, a megabyte,
    control characters) is dropped whole rather than cut into a code that means something else.
    """
    if isinstance(value, str) and 0 < len(value) <= MAX_FIELD_CHARS and value.isprintable():
        return value
    return None


class ProviderError(Exception):
    """``code`` / ``param``: what the provider's OpenAI-style error object said, checked by
    ``error_field`` (None when it said nothing usable)."""

    def __init__(self, provider: str, message: str, status: int | None = None, *,
                 code: str | None = None, param: str | None = None) -> None:
        super().__init__(f"{provider}: {message}")
        self.provider = provider
        self.status = status
        self.message = message
        self.code = code
        self.param = param

    def __str__(self) -> str:
        code = f" ({self.status})" if self.status else ""
        return f"{self.provider}{code}: {self.message}"


class ProviderRetryable(ProviderError):
    def __init__(self, provider: str, message: str, status: int | None = None,
                 retry_after: float | None = None, *, code: str | None = None, param: str | None = None) -> None:
        super().__init__(provider, message, status, code=code, param=param)
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
