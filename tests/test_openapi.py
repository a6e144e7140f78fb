"""/openapi.json is generated from the route table and the models that validate requests: every
route is in it with its path parameters, who may call it is stated per route, and its request
schemas refuse what the server refuses (the cases an outside fuzzer found)."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from jsonschema import Draft202012Validator
from starlette.routing import Route

from tests.fixtures.accounts import Account

PUBLIC = {"/healthz", "/readyz", "/openapi.json", "/metrics", "/files/{path}", "/webhooks/replicate",
          "/webhooks/stripe"}


@pytest.fixture
async def spec(client: httpx.AsyncClient) -> dict[str, Any]:
    r = await client.get("/openapi.json")
    assert r.status_code == 200
    doc: dict[str, Any] = r.json()
    return doc


def body_validator(spec: dict[str, Any], path: str, method: str = "post") -> Draft202012Validator:
    schema = spec["paths"][path][method]["requestBody"]["content"]["application/json"]["schema"]
    return Draft202012Validator({**schema, "components": spec["components"]})


async def test_every_route_is_described_with_its_path_parameters(spec: dict[str, Any]) -> None:
    from ingress.app import ROUTES
    from ingress.openapi import openapi_path

    Draft202012Validator.check_schema({"components": spec["components"]})
    for route in ROUTES:
        if not isinstance(route, Route):
            continue  # the web UI's static files (a Mount), not an API
        path, names = openapi_path(route.path)
        for method in (route.methods or set()) - {"HEAD"}:
            op = spec["paths"][path][method.lower()]
            declared = [p["name"] for p in op.get("parameters", []) if p["in"] == "path"]
            assert declared == names, (method, path)
            assert all(p["required"] for p in op.get("parameters", []) if p["in"] == "path")
            assert op["responses"] and op["summary"] and op["tags"]
    task = spec["paths"]["/tasks/{id}"]["get"]["parameters"][0]
    assert task["schema"]["type"] == "string" and "job_id" in task["description"]  # the id, or its job_id


async def test_who_may_call_is_stated_per_route(spec: dict[str, Any]) -> None:
    assert "security" not in spec  # no document-wide requirement: each operation says its own
    for path, ops in spec["paths"].items():
        for method, op in ops.items():
            if path in PUBLIC or path.startswith("/ui/") or (method, path) == ("get", "/"):  # web pages, sign-in
                assert op["security"] == [], (method, path)
            elif path.startswith("/admin/"):
                assert op["security"] == [{"admin": []}]
            elif path == "/accounts":
                assert op["security"] == [{"admin": []}, {}]  # {}: open sign-up, when the operator allows it
            else:
                assert op["security"] == [{"bearer": []}], (method, path)
    assert set(spec["components"]["securitySchemes"]) == {"bearer", "admin"}


async def test_an_undeclared_handler_is_refused_when_building() -> None:
    from ingress.openapi import build

    async def nobody(request: Any) -> Any:
        raise AssertionError

    with pytest.raises(LookupError, match="/nowhere"):
        build([Route("/nowhere", nobody)])


@pytest.mark.parametrize(("path", "body"), [
    ("/chat-completion", {"model": "m", "messages": None}),
    ("/chat-completion", {"model": "m", "messages": []}),
    ("/chat-completion", {"model": "m", "prompt": "hi", "stream": True}),
    ("/chat-completion", {"model": "m", "prompt": "hi", "max_tokens": "5"}),
    ("/chat-completion", {"model": "m", "prompt": "hi", "webhook_events_filter": ["completed"]}),
    ("/chat-completion", {"model": "m", "prompt": "hi", "webhook": "https://example.com/h",
                          "webhook_events_filter": ["finished"]}),
    ("/v1/chat/completions", {"model": "m", "messages": None}),
    ("/moderate", {"imageBase64": "A"}),
    ("/moderate", {"text": "hi", "imageMime": "image/tiff"}),
    ("/moderate", {"imageUrl": "https://example.com/a.png", "imageBase64": "iVBORw0KGgo="}),
    ("/moderate", {"text": ""}),
    ("/face-swap/run", {"input": {"source_image": "A", "target_image": "A"}}),
    ("/generate", {"model": "not a model", "input": {}}),
    ("/api-keys", {"openrouter_key": "sk-ñ"}),
    ("/api-keys", {"github_key": "x"}),
    ("/api-keys", {}),
])
async def test_request_schemas_refuse_what_the_server_refuses(spec: dict[str, Any], client: httpx.AsyncClient,
                                                              funded: Account, path: str,
                                                              body: dict[str, Any]) -> None:
    assert not body_validator(spec, path).is_valid(body), body
    r = await client.post(path, headers=funded.headers, json=body)
    assert r.status_code == 400, r.text


@pytest.mark.parametrize(("path", "body"), [
    ("/chat-completion", {"model": "m", "prompt": "hi", "messages": None}),
    ("/chat-completion", {"model": "m", "messages": [{"role": "user", "content": "hi"}], "top_p": 0.5}),
    ("/moderate", {"text": "hi", "imageMime": "IMAGE/JPG"}),
    ("/api-keys", {"openrouter_key": None}),
])
async def test_request_schemas_accept_what_the_server_takes(spec: dict[str, Any], path: str,
                                                            body: dict[str, Any]) -> None:
    assert body_validator(spec, path).is_valid(body), body


async def test_method_not_allowed_names_every_method_of_the_path(client: httpx.AsyncClient) -> None:
    # ROUTES holds one Route per method; the 405 used to name only the first one's.
    r = await client.request("PATCH", "/card")
    assert r.status_code == 405 and r.headers["allow"] == "DELETE, GET, HEAD, POST"


async def test_task_ids_beyond_bigint_are_404(client: httpx.AsyncClient, funded: Account) -> None:
    for raw in ("66514080852525061242880", "9223372036854775808", "٣", "0"):
        r = await client.get(f"/tasks/{raw}/deliveries", headers=funded.headers)
        assert r.status_code == 404, (raw, r.text)
        assert (await client.get(f"/tasks/{raw}", headers=funded.headers)).status_code == 404


async def test_admin_routes_without_a_credential_are_401(client: httpx.AsyncClient) -> None:
    r = await client.post("/admin/credit", json={"uid": "x", "amount": 1})
    assert r.status_code == 401
    r = await client.post("/admin/credit", headers={"Authorization": "Bearer wrong"}, json={"uid": "x", "amount": 1})
    assert r.status_code == 403


async def test_removing_a_million_dollars_is_a_400_not_a_500(client: httpx.AsyncClient, funded: Account) -> None:
    # -1e12 micro-dollars went to Postgres as an int4 parameter.
    r = await client.post("/admin/credit", headers={"Authorization": "Bearer test-admin-token"},
                          json={"uid": funded.uid, "amount": -1_000_000})
    assert r.status_code == 400 and "below zero" in r.json()["error"]


async def test_a_non_string_uid_in_a_billing_body_is_400(client: httpx.AsyncClient, funded: Account) -> None:
    for path in ("/card/setup", "/topup_card", "/billing-threshold"):
        r = await client.post(path, headers=funded.headers, json={"uid": {}, "amount": 10, "enabled": True})
        assert r.status_code == 400 and "uid" in r.json()["error"], (path, r.text)


@pytest.mark.parametrize("key", ["sk-ñ", "sk-a\tb", "sk-a\x1fb", "sk a"])
async def test_provider_keys_must_fit_an_authorization_header(client: httpx.AsyncClient, funded: Account,
                                                              key: str) -> None:
    # A non-ASCII key was stored, then every call of the account crashed its worker (a 502).
    r = await client.post("/api-keys", headers=funded.headers, json={"chatgpt_key": key})
    assert r.status_code == 400 and "chatgpt_key" in r.json()["error"]


async def test_a_nul_in_a_job_id_is_400_not_a_500(client: httpx.AsyncClient, funded: Account) -> None:
    # It reached Postgres, which cannot hold U+0000 in text.
    r = await client.get("/prediction-status", params={"job_id": "a\x00b"}, headers=funded.headers)
    assert r.status_code == 400 and "job_id" in r.json()["error"]
    signed = {"webhook-id": "msg_1", "webhook-timestamp": "1", "webhook-signature": "v1,x"}
    r = await client.post("/webhooks/replicate", params={"job_id": "a\x00b"}, headers=signed, content=b"{}")
    assert r.status_code == 400


async def test_a_payment_method_id_outside_stripes_alphabet_is_400(client: httpx.AsyncClient,
                                                                   funded: Account) -> None:
    # It went into Stripe's URL path, and came back as a 502.
    r = await client.post("/card", headers=funded.headers, json={"payment_method": "pm_M:7{S9BzC"})
    assert r.status_code == 400 and "payment_method" in r.json()["error"]


@pytest.mark.parametrize("url", ["hTtPS://.exe", "https://a..b/", "https://" + "a" * 70 + ".com/"])
async def test_a_host_name_the_resolver_cannot_encode_is_400(client: httpx.AsyncClient, funded: Account,
                                                             url: str) -> None:
    # The idna codec's UnicodeError escaped the resolver as a 500.
    r = await client.post("/moderate", headers=funded.headers, json={"text": "hi", "webhook": url})
    assert r.status_code == 400 and "resolve" in r.json()["error"], r.text
    r = await client.post("/moderate", headers=funded.headers, json={"imageUrl": url})
    assert r.status_code == 400, r.text


async def test_task_list_filters_are_described_with_the_values_the_handler_takes(
        spec: dict[str, Any], client: httpx.AsyncClient, funded: Account) -> None:
    # README: "GET /tasks takes kind and status"; the description had page and size only.
    from jobs.names import KINDS

    params = {p["name"]: p["schema"] for p in spec["paths"]["/tasks"]["get"]["parameters"]}
    assert params["kind"]["enum"] == sorted(KINDS)
    assert params["status"]["enum"] == ["canceled", "completed", "failed", "in_progress"]
    for name, schema in (("kind", params["kind"]), ("status", params["status"])):
        for value in schema["enum"]:
            r = await client.get("/tasks", params={name: value}, headers=funded.headers)
            assert r.status_code == 200, (name, value, r.text)
        r = await client.get("/tasks", params={name: "nope"}, headers=funded.headers)
        assert r.status_code == 400 and name in r.json()["error"]
