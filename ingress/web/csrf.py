"""CSRF for cookie-authenticated requests: a state-changing request must carry the session's
token in X-CSRF-Token (a cross-origin page can neither read it nor send a custom header without
a CORS preflight this gateway never grants) and, when the browser names its Origin, come from us."""

from __future__ import annotations

import hmac
from urllib.parse import urlsplit

from starlette.requests import Request

from jobs.errors import Forbidden
from jobs.settings import Settings

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
CSRF_HEADER = "x-csrf-token"


def _origin_of(url: str) -> str:
    u = urlsplit(url)
    return f"{u.scheme}://{u.netloc}".lower()


def check_origin(request: Request, settings: Settings, *, required: bool) -> None:
    """Refuse a request whose Origin (or, lacking one, Referer) is not this gateway."""
    origin = request.headers.get("origin")
    if origin is None and request.headers.get("referer"):
        origin = _origin_of(request.headers["referer"])
    if origin is None:
        if required:
            raise Forbidden("Cross-site request refused: no Origin header")
        return
    allowed = {_origin_of(str(request.url)), _origin_of(settings.public_url)}
    if origin.lower() not in allowed:
        raise Forbidden("Cross-site request refused: Origin is not this gateway")


def check_csrf(request: Request, token: str, settings: Settings) -> None:
    if request.method in SAFE_METHODS:
        return
    check_origin(request, settings, required=False)
    given = request.headers.get(CSRF_HEADER, "")
    if not given or not hmac.compare_digest(given.encode("latin-1", "replace"), token.encode()):
        raise Forbidden("Missing or wrong X-CSRF-Token: a cookie-authenticated request that changes "
                        "something must send the page's CSRF token (or use 'Authorization: Bearer')")
