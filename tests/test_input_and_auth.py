"""Every bad input is a clear {"error": …} naming the problem; nobody reads another's data."""

from __future__ import annotations

import time
from typing import Any

import httpx
import jwt
import pytest

from tests.fixtures.accounts import Account, MakeAccount, audit
from tests.helpers import CHAT


@pytest.mark.parametrize(("body", "status", "words"), [
    ({"prompt": "hi"}, 400, "Missing model parameter"),
    ({"model": "m", "messages": "hi"}, 400, "messages"),
    ({"model": "m", "messages": []}, 400, "messages"),
    ({"model": "m", "prompt": "hi", "temperature": 5}, 400, "temperature"),
    ({"model": "m", "prompt": "hi", "max_tokens": 0}, 400, "max_tokens"),
    ({"model": "m"}, 400, "messages"),
    ({"model": "m", "prompt": "hi", "stream": True}, 400, "stream"),
    ({"model": 3, "prompt": "hi"}, 400, "model"),
    ([1, 2], 400, "JSON object"),
])
async def test_bad_chat_bodies(client: httpx.AsyncClient, funded: Account, app: Any,
                               body: Any, status: int, words: str) -> None:
    r = await client.post(CHAT, headers=funded.headers, json=body)
    assert r.status_code == status, r.text
    assert words in r.json()["error"]
    assert await audit(app, funded.uid) == (5_000_000, 5_000_000)


async def test_body_that_is_not_json(client: httpx.AsyncClient, funded: Account) -> None:
    r = await client.post(CHAT, headers=funded.headers, content=b"model=m&prompt=hi")
    assert r.status_code == 400
    assert r.json() == {"error": "Request body is not valid JSON"}


async def test_2mb_body_is_413(client: httpx.AsyncClient, funded: Account, app: Any) -> None:
    r = await client.post(CHAT, headers=funded.headers, json={"model": "m", "prompt": "x" * (2 << 20)})
    assert r.status_code == 413
    assert "larger than" in r.json()["error"]
    assert await audit(app, funded.uid) == (5_000_000, 5_000_000)


async def test_413_also_without_content_length(client: httpx.AsyncClient, funded: Account) -> None:
    async def chunks() -> Any:
        for _ in range(3):
            yield b"x" * (1 << 20)

    r = await client.post(CHAT, headers=funded.headers, content=chunks())
    assert r.status_code == 413


async def test_no_credential_is_401(client: httpx.AsyncClient, funded: Account) -> None:
    r = await client.post(CHAT, json={"uid": funded.uid, "model": "m", "prompt": "x"})
    assert r.status_code == 401
    assert "Authorization" in r.json()["error"]
    r = await client.get("/balance", headers={"Authorization": "Bearer sn_not-a-real-key"})
    assert r.status_code == 401 and r.json() == {"error": "Invalid API key"}
    r = await client.get("/balance", headers={"Authorization": "Basic abc"})
    assert r.status_code == 401
    # Without a credential the body is never looked at: 401, not 400 or 413.
    r = await client.post(CHAT, content=b"not json")
    assert r.status_code == 401
    r = await client.post(CHAT, json={"model": "m", "prompt": "x" * (2 << 20)})
    assert r.status_code == 401


async def test_another_accounts_uid_is_403(client: httpx.AsyncClient, funded: Account,
                                           make_account: MakeAccount) -> None:
    other = await make_account()
    r = await client.post(CHAT, headers=funded.headers, json={"uid": other.uid, "model": "m", "prompt": "x"})
    assert r.status_code == 403
    r = await client.get("/balance", headers=funded.headers, params={"uid": other.uid})
    assert r.status_code == 403


async def test_another_accounts_task_is_404(client: httpx.AsyncClient, funded: Account,
                                            make_account: MakeAccount, chat_worker: Any) -> None:
    r = await client.post(CHAT, headers=funded.headers, json={"model": "m", "prompt": "mine"})
    task_id, job_id = r.json()["prediction"]["id"], r.json()["prediction"]["job_id"]
    other = await make_account()
    assert (await client.get(f"/tasks/{task_id}", headers=other.headers)).status_code == 404
    assert (await client.delete(f"/tasks/{task_id}", headers=other.headers)).status_code == 404
    r = await client.get("/prediction-status", params={"job_id": job_id}, headers=other.headers)
    assert r.status_code == 404
    assert (await client.get("/tasks", headers=other.headers)).json()["total"] == 0
    assert (await client.get("/tasks/not-a-number", headers=funded.headers)).status_code == 404


async def test_prediction_status_needs_job_id(client: httpx.AsyncClient, funded: Account) -> None:
    r = await client.get("/prediction-status", headers=funded.headers)
    assert r.status_code == 400 and r.json() == {"error": "Missing job_id parameter"}


async def test_bad_pagination(client: httpx.AsyncClient, funded: Account) -> None:
    r = await client.get("/tasks", headers=funded.headers, params={"size": 1000})
    assert r.status_code == 400 and "size" in r.json()["error"]
    r = await client.get("/tasks", headers=funded.headers, params={"page": "x"})
    assert r.status_code == 400 and "page" in r.json()["error"]


async def test_unknown_route_and_method(client: httpx.AsyncClient) -> None:
    r = await client.get("/nope")
    assert r.status_code == 404 and "error" in r.json()
    r = await client.get(CHAT)
    assert r.status_code == 405 and "error" in r.json()


def _hs256(sub: str, secret: str, **claims: Any) -> str:
    payload = {"sub": sub, "aud": "authenticated", "exp": int(time.time()) + 600, "role": "authenticated",
               **claims}
    return jwt.encode(payload, secret, algorithm="HS256")


async def test_supabase_hs256_token_provisions_the_account(client: httpx.AsyncClient,
                                                           jwt_keys: dict[str, Any]) -> None:
    import uuid

    sub = str(uuid.uuid4())
    token = _hs256(sub, jwt_keys["secret"])
    r = await client.get("/balance", headers={"Authorization": f"Bearer {token}"}, params={"uid": sub})
    assert r.status_code == 200 and r.json() == {"balance": 5.0}
    r = await client.get("/balance", headers={"Authorization": f"Bearer {token}"})
    assert r.json() == {"balance": 5.0}  # provisioned once


async def test_supabase_es256_token_via_jwks(client: httpx.AsyncClient, jwt_keys: dict[str, Any]) -> None:
    import uuid

    sub = str(uuid.uuid4())
    token = jwt.encode({"sub": sub, "aud": "authenticated", "exp": int(time.time()) + 600},
                       jwt_keys["private_key"], algorithm="ES256", headers={"kid": jwt_keys["kid"]})
    r = await client.get("/balance", headers={"Authorization": f"Bearer {token}"})
    assert r.status_code == 200, r.text


@pytest.mark.parametrize("case", ["expired", "wrong_secret", "wrong_audience", "alg_none"])
async def test_bad_tokens_are_401(client: httpx.AsyncClient, jwt_keys: dict[str, Any], case: str) -> None:
    secret = jwt_keys["secret"]
    if case == "expired":
        token = _hs256("u1", secret, exp=int(time.time()) - 10)
    elif case == "wrong_secret":
        token = _hs256("u1", "another-secret-of-at-least-32-bytes-long")
    elif case == "wrong_audience":
        token = _hs256("u1", secret, aud="anon")
    else:
        token = jwt.encode({"sub": "u1", "aud": "authenticated", "exp": int(time.time()) + 60}, "",
                           algorithm="none")
    r = await client.get("/balance", headers={"Authorization": f"Bearer {token}"})
    assert r.status_code == 401, r.text
    assert "token" in r.json()["error"].lower()


async def test_uid_only_mode_is_opt_in(app: Any, funded: Account, client: httpx.AsyncClient) -> None:
    from ingress.app import create_app

    r = await client.get("/balance", params={"uid": funded.uid})
    assert r.status_code == 401
    open_app = create_app(app.state.sn.settings.model_copy(update={"allow_uid_only": True}))
    async with open_app.router.lifespan_context(open_app), httpx.AsyncClient(
            transport=httpx.ASGITransport(app=open_app), base_url="http://gateway.test") as c:
        assert (await c.get("/balance", params={"uid": funded.uid})).json() == {"balance": 5.0}
        # Only the reference's public endpoints: key management still needs a credential.
        assert (await c.get("/api-keys", params={"uid": funded.uid})).status_code == 401
        assert (await c.get("/balance", params={"uid": "nobody"})).status_code == 404
