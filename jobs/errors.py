"""SyncNode's exception tree. One handler renders every one as ``{"error": message}``.

    SyncNodeError (500)
    ├── BadRequest (400)
    │   └── MissingProviderKey
    ├── Unauthorized (401)
    ├── PaymentRequired (402)
    │   └── InsufficientBalance
    ├── Forbidden (403)
    ├── NotFound (404)
    ├── Conflict (409)
    │   ├── IdempotencyConflict
    │   └── IdempotencyInProgress
    ├── PayloadTooLarge (413)
    ├── RateLimited (429)
    ├── UpstreamError (502)
    ├── Unavailable (503)
    ├── NotImplementedYet (501)
    └── GatewayTimeout (504)
"""

from __future__ import annotations

from typing import Any


class SyncNodeError(Exception):
    """``code`` / ``param``: OpenAI's ``error.code`` / ``error.param`` for /v1's answer (a
    provider's, passed on); the reference API's ``body()`` leaves them out."""

    status_code = 500

    def __init__(self, message: str, *, extra: dict[str, Any] | None = None,
                 headers: dict[str, str] | None = None, code: str | None = None,
                 param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.extra = extra or {}
        self.headers = headers
        self.code = code
        self.param = param

    def body(self) -> dict[str, Any]:
        return {"error": self.message, **self.extra}


class BadRequest(SyncNodeError):
    status_code = 400


class MissingProviderKey(BadRequest):
    def __init__(self, key_name: str, provider: str) -> None:
        super().__init__(
            f"No {provider} key stored for this account: add '{key_name}' with POST /api-keys"
        )


class Unauthorized(SyncNodeError):
    status_code = 401


class PaymentRequired(SyncNodeError):
    status_code = 402


class InsufficientBalance(PaymentRequired):
    pass


class Forbidden(SyncNodeError):
    status_code = 403


class NotFound(SyncNodeError):
    status_code = 404


class Conflict(SyncNodeError):
    status_code = 409


class IdempotencyConflict(Conflict):
    def __init__(self) -> None:
        super().__init__("Idempotency-Key was already used with a different request body")


class IdempotencyInProgress(Conflict):
    def __init__(self, extra: dict[str, Any]) -> None:
        super().__init__("A request with this Idempotency-Key is still running and enough others are waiting "
                         "on it: poll the get URL", extra=extra)


class PayloadTooLarge(SyncNodeError):
    status_code = 413


class RateLimited(SyncNodeError):
    status_code = 429


class NotImplementedYet(SyncNodeError):
    status_code = 501


class UpstreamError(SyncNodeError):
    status_code = 502


class Unavailable(SyncNodeError):
    status_code = 503


class GatewayTimeout(SyncNodeError):
    status_code = 504
