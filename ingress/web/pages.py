"""GET pages. Each renders a shell with the signed-in uid and the CSRF token; the page's script
fills it from the JSON API (the same endpoints users call), so no page has logic of its own."""

from __future__ import annotations

import functools
import re
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.staticfiles import StaticFiles
from starlette.templating import Jinja2Templates

from ingress.api_requests import TASK_REF, NextQuery, PageTaskPath
from ingress.api_spec import Raw, api
from ingress.state import state
from ingress.web import sessions
from jobs.errors import NotFound
from jobs.names import KINDS

_HERE = Path(__file__).parent
_TASK_REF = re.compile(TASK_REF)
templates = Jinja2Templates(directory=str(_HERE / "templates"))
static = StaticFiles(directory=str(_HERE / "static"))

# Stripe.js is the one outside script a page may load, and only when the operator configured
# Stripe (the billing page asks /card/setup for the publishable key first).
_STRIPE = "https://js.stripe.com https://hooks.stripe.com"


@functools.cache
def _headers(stripe_js_url: str) -> dict[str, str]:
    u = urlsplit(stripe_js_url)
    js = f"{u.scheme}://{u.netloc}"
    csp = (f"default-src 'self'; script-src 'self' {js}; frame-src {js} {_STRIPE}; "
           f"connect-src 'self' {js} https://api.stripe.com; img-src 'self' data: blob: https: http:; "
           "media-src 'self' blob: https: http:; style-src 'self' 'unsafe-inline'; frame-ancestors 'none'; "
           "base-uri 'none'; form-action 'self'")
    return {"Content-Security-Policy": csp, "X-Content-Type-Options": "nosniff",
            "Referrer-Policy": "same-origin", "Cache-Control": "no-store"}


# A page, or (signed out, or already signed in on the sign-in page) a redirect to where to go.
PAGE = {200: Raw("text/html", {"type": "string"}, "The page"), 303: None}


def _safe_next(value: str | None) -> str:
    # Only a local path: an absolute or scheme-relative URL would make sign-in an open redirect.
    # Browsers drop tabs/newlines and read "\\" as "/" before resolving, so "/\t/evil" or "/\\evil"
    # turn scheme-relative: refuse every control character, whitespace and backslash outright.
    if (not value or len(value) > 2048 or not value.startswith("/") or value[1:2] in ("/", "\\")
            or any(c.isspace() or ord(c) < 0x20 or 0x7F <= ord(c) < 0xA0 or c == "\\" for c in value)):
        return "/"
    return value


async def _render(request: Request, template: str, *, public: bool = False, **ctx: Any) -> Response:
    session = await sessions.current(request)
    if session is None and not public:
        target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        return RedirectResponse(f"/ui/signin?next={quote(target, safe='')}", status_code=303)
    st = state(request)
    return templates.TemplateResponse(request, template, {
        "uid": session.uid if session else None, "csrf": session.csrf if session else "",
        "open_signup": st.settings.open_signup, "page": template.removesuffix(".html"),
        "stripe_js_url": st.settings.stripe_js_url, **ctx,
    }, headers=_headers(st.settings.stripe_js_url))


@api("Web UI page: The dashboard", tags=("web",), auth="none", ok=PAGE, errors=(404,))
async def home(request: Request) -> Response:
    return await _render(request, "home.html")


@api("Web UI page: Sign in", tags=("web",), auth="none", query=NextQuery, ok=PAGE, errors=(404,))
async def signin(request: Request) -> Response:
    target = _safe_next(request.query_params.get("next"))
    if await sessions.current(request) is not None:
        return RedirectResponse(target, status_code=303)  # already signed in: go where it was headed
    return await _render(request, "signin.html", public=True, next=target)


@api("Web UI page: Sign up", tags=("web",), auth="none", ok=PAGE, errors=(404,))
async def signup(request: Request) -> Response:
    return await _render(request, "signup.html", public=True)


@api("Web UI page: Task history", tags=("web",), auth="none", ok=PAGE, errors=(404,))
async def tasks(request: Request) -> Response:
    # Every kind GET /tasks filters by (embeddings included), not a list kept by hand.
    return await _render(request, "tasks.html", kinds=list(KINDS))


@api("Web UI page: One task", tags=("web",), auth="none", path=PageTaskPath, ok=PAGE, errors=(404,))
async def task(request: Request) -> Response:
    # The task's id or its job_id, as GET /tasks/{id} takes them (the billing history shows job ids);
    # anything else cannot name a task, and is not echoed into the page.
    task_id = request.path_params["id"]
    if not _TASK_REF.fullmatch(task_id) or task_id.strip("0") == "":
        raise NotFound("Task not found")
    return await _render(request, "task.html", task_id=task_id)


@api("Web UI page: API keys", tags=("web",), auth="none", ok=PAGE, errors=(404,))
async def keys(request: Request) -> Response:
    return await _render(request, "keys.html")


@api("Web UI page: Billing", tags=("web",), auth="none", ok=PAGE, errors=(404,))
async def billing(request: Request) -> Response:
    # The amount fields take what the API takes (whole cents within the top-up bounds), no less.
    s = state(request).settings
    return await _render(request, "billing.html", topup_min=s.topup_min, topup_max=s.topup_max)


@api("Web UI page: Playground", tags=("web",), auth="none", ok=PAGE, errors=(404,))
async def playground(request: Request) -> Response:
    return await _render(request, "playground.html", public_url=state(request).settings.public_url)


@api("Web UI page: API documentation", tags=("web",), auth="none", ok=PAGE, errors=(404,))
async def docs(request: Request) -> Response:
    return await _render(request, "docs.html", public=True)
