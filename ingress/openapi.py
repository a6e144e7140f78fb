"""GET /openapi.json: built from the route table and each handler's ``@api`` declaration
(``ingress/api_spec.py``), request and answer schemas from the pydantic models themselves.

Nothing here is written by hand per route: a path, its methods and its path parameters come
from ``ingress.app.ROUTES``; what it takes, answers and requires comes from its declaration.
``tests/test_openapi_fuzz.py`` runs schemathesis against a real gateway to keep the two honest.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

from pydantic import BaseModel
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from ingress.api_models import ErrorBody, OpenAIError
from ingress.api_spec import SPECS, Answers, Operation, Raw, api
from ingress.errors import V1_PREFIX
from ingress.hooks import WebhookFields
from ingress.responses import JSON

REF = "#/components/schemas/{model}"
_PARAM = re.compile(r"{([^}:]+)(?::[^}]+)?}")
_SECURITY: dict[str, list[dict[str, list[str]]]] = {
    "none": [], "signature": [], "bearer": [{"bearer": []}], "admin": [{"admin": []}],
    # Open sign-up (SYNCNODE_OPEN_SIGNUP) needs no credential at all.
    "signup": [{"admin": []}, {}],
}
_REASONS = {200: "OK", 201: "Created", 202: "Accepted: still running, poll the get URL", 400: "Bad request",
            401: "No or an invalid credential", 402: "Balance too low, or card payments not set up",
            403: "Not allowed for this credential", 404: "Not found", 409: "Conflict",
            413: "Body too large", 429: "Too many requests: retry after Retry-After seconds",
            502: "The provider failed (refunded)", 503: "Unavailable", 504: "Still running: poll"}


class _Schemas:
    """components.schemas, filled as models are referenced."""

    def __init__(self) -> None:
        self.all: dict[str, Any] = {}

    def ref(self, model: type[BaseModel], mode: str = "validation", webhooks: bool = False) -> dict[str, str]:
        name = model.__name__
        if name not in self.all:
            schema = model.model_json_schema(ref_template=REF, mode=mode)  # type: ignore[arg-type]
            self.all.update(schema.pop("$defs", {}))
            if webhooks:
                _add_webhook_fields(schema)
            self.all[name] = schema
        return {"$ref": REF.format(model=name)}


def _add_webhook_fields(schema: dict[str, Any]) -> None:
    fields = WebhookFields.model_json_schema(ref_template=REF)
    schema.setdefault("properties", {}).update(fields["properties"])
    # webhook_target refuses an events filter without a webhook.
    schema["if"] = {"required": ["webhook_events_filter"], "properties": {"webhook_events_filter": {"type": "array"}}}
    schema["then"] = {"required": ["webhook"], "properties": {"webhook": {"type": "string"}}}


def _params(where: str, model: type[BaseModel] | None, names: Iterable[str] = ()) -> list[dict[str, Any]]:
    if model is None:
        return [{"name": n, "in": where, "required": True, "schema": {"type": "string"}} for n in names]
    schema = model.model_json_schema(ref_template=REF)
    required = set(schema.get("required", []))
    out = []
    for name, prop in schema["properties"].items():
        prop = _not_null(prop)
        description = prop.pop("description", None)
        prop.pop("title", None)
        p: dict[str, Any] = {"name": name, "in": where, "required": where == "path" or name in required,
                             "schema": prop}
        if description:
            p["description"] = description
        out.append(p)
    return out


def _not_null(prop: Mapping[str, Any]) -> dict[str, Any]:
    """A parameter's schema without pydantic's ``| None``: a query string is absent, never null."""
    out = {k: v for k, v in prop.items() if k != "default" or v is not None}
    branches = [b for b in out.pop("anyOf", []) if b != {"type": "null"}]
    if len(branches) == 1:
        out.update(branches[0])
    elif branches:
        out["anyOf"] = branches
    return out


def _content(answers: Answers, schemas: _Schemas) -> dict[str, Any] | None:
    out: dict[str, Any] = {}
    for answer in answers if isinstance(answers, tuple) else (answers,):
        if isinstance(answer, Raw):
            out[answer.media_type] = {"schema": dict(answer.schema)}
        elif answer is not None:
            out["application/json"] = {"schema": schemas.ref(answer, "serialization")}
    return out or None


def _responses(op: Operation, path: str, schemas: _Schemas) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for status, answer in op.ok.items():
        desc = answer.description if isinstance(answer, Raw) else _REASONS.get(status, "OK")
        if isinstance(answer, tuple):
            desc = " / ".join(a.description if isinstance(a, Raw) else _REASONS.get(status, "OK") for a in answer)
        r: dict[str, Any] = {"description": desc}
        content = _content(answer, schemas)
        if content is not None:
            r["content"] = content
        out[str(status)] = r
    error = schemas.ref(OpenAIError if path.startswith(V1_PREFIX) else ErrorBody, "serialization")
    # Every call with an account's credential passes its rate limit (ingress/limits.py): 429.
    for status in (*op.errors, *((429,) if op.auth == "bearer" else ())):
        out.setdefault(str(status), {"description": _REASONS.get(status, "Error"),
                                     "content": {"application/json": {"schema": error}}})
    return out


def operation(op: Operation, path: str, path_names: list[str], schemas: _Schemas) -> dict[str, Any]:
    doc: dict[str, Any] = {"summary": op.summary, "tags": list(op.tags), "security": _SECURITY[op.auth],
                           "responses": _responses(op, path, schemas)}
    params = _params("path", op.path, path_names) + _params("query", op.query)
    params += [{"name": h, "in": "header", "required": h in op.required_headers, "description": d,
                "schema": {"type": "string"}} for h, d in op.headers.items()]
    if params:
        doc["parameters"] = params
    content: dict[str, Any] = {}
    if op.body is not None:
        content["application/json"] = {"schema": schemas.ref(op.body, webhooks=op.webhooks)}
    if op.raw_body is not None:
        content[op.raw_body] = {"schema": {}}
    if content:
        doc["requestBody"] = {"required": op.body_required, "content": content}
    return doc


def openapi_path(route_path: str) -> tuple[str, list[str]]:
    """``/files/{path:path}`` → (``/files/{path}``, ["path"])."""
    return _PARAM.sub(r"{\1}", route_path), _PARAM.findall(route_path)


def build(routes: Iterable[BaseRoute]) -> dict[str, Any]:
    paths: dict[str, dict[str, Any]] = {}
    schemas = _Schemas()
    for route in routes:
        if not isinstance(route, Route):
            continue
        op = SPECS.get(route.endpoint)
        if op is None:
            raise LookupError(f"{route.path}: its handler has no @api declaration (ingress/api_spec.py)")
        path, names = openapi_path(route.path)
        for method in sorted((route.methods or set()) - {"HEAD"}):
            paths.setdefault(path, {})[method.lower()] = operation(op, path, names, schemas)
    return {
        "openapi": "3.1.0",
        "info": {"title": "SyncNode", "version": "0.1.0", "description": _DESCRIPTION},
        "paths": paths,
        "components": {"schemas": schemas.all, "securitySchemes": _SCHEMES},
    }


_DESCRIPTION = (
    "AI API gateway. Authenticate with 'Authorization: Bearer <API key>' (or a Supabase access token). "
    "Send 'Prefer: respond-async' to get a job_id at once instead of waiting. Money is in dollars. "
    "The reference's public routes (chat, moderation, media, status, balance) also take a bare uid "
    "when the operator set SYNCNODE_ALLOW_UID_ONLY. Under /v1, errors take OpenAI's shape. "
    "A NUL character (U+0000) in any string of a body or query is refused with 400. "
    "This document is generated from the models that validate requests (ingress/openapi.py).")

_SCHEMES: Mapping[str, Any] = {
    "bearer": {"type": "http", "scheme": "bearer",
               "description": "A SyncNode API key (sk-sn-…) or a Supabase access token"},
    "admin": {"type": "http", "scheme": "bearer", "description": "The operator's SYNCNODE_ADMIN_TOKEN"},
}


@api("This document", tags=("operations",), auth="none", ok={200: Raw("application/json", {"type": "object"})},
     errors=())
async def openapi(request: Request) -> Response:
    # Built once per app from its own routes: the document describes exactly what is served.
    spec = getattr(request.app.state, "openapi", None)
    if spec is None:
        spec = request.app.state.openapi = build(request.app.routes)
    return JSON(spec)
