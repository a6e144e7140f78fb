"""POST /moderate and POST /: the reference's shape for every input combination, on the local
backend (real models) and on the OpenAI backend (faked at the HTTP boundary), and the money."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest

from tests.fixtures.accounts import Account, MakeAccount, audit
from tests.fixtures.moderation import ImageServer, b64, landscape
from workers.moderation.categories import CATEGORIES, FLAGS, IMAGE_KEYS

PNG = landscape()


def check_section(sec: dict[str, Any], keys: tuple[str, ...]) -> None:
    assert set(keys) <= set(sec["scores"])
    assert all(isinstance(v, int | float) and 0 <= v <= 1 for v in sec["scores"].values())
    for f in (*FLAGS, "safe"):
        assert sec[f] in (0, 1) and isinstance(sec[f], int)
    cov = sec["coverage"]
    # Every key is either scored or unscored, never both; unscored ones read exactly 0.
    assert not set(cov["scored"]) & set(cov["unscored"])
    assert set(sec["scores"]) | set(FLAGS) == set(cov["scored"]) | set(cov["unscored"])
    for k in cov["unscored"]:
        assert sec["scores"].get(k, 0) == 0 and sec.get(k, 0) == 0
    assert set(cov["sources"]) <= set(cov["scored"])


def check_response(body: dict[str, Any], uid: str, text: bool, image: bool) -> None:
    assert body["uid"] == uid
    assert ("text_moderation" in body) is text and ("image_moderation" in body) is image
    if text:
        check_section(body["text_moderation"], CATEGORIES)
    if image:
        check_section(body["image_moderation"], IMAGE_KEYS)
    overall = body["overall_moderation"]
    sections = [body[k] for k in ("text_moderation", "image_moderation") if k in body]
    assert overall["safe"] == min(s["safe"] for s in sections)
    for f in FLAGS:
        assert overall[f] == max(s[f] for s in sections)


INPUTS = {
    "text": lambda srv: {"text": "Hello, this is a test message"},
    "base64": lambda srv: {"imageBase64": b64(PNG), "imageMime": "image/png"},
    "url": lambda srv: {"imageUrl": f"{srv.url}/img.png"},
    "text+base64": lambda srv: {"text": "Hello, this is a test message", "imageBase64": b64(PNG),
                                "imageMime": "image/png"},
    "text+url": lambda srv: {"text": "Hello, this is a test message", "imageUrl": f"{srv.url}/img.png"},
}


@pytest.mark.parametrize("combo", list(INPUTS))
async def test_local_shape(combo: str, client: httpx.AsyncClient, make_account: MakeAccount,
                           moderation_worker: Any, allow_image_server: ImageServer, app: Any) -> None:
    acct = await make_account()
    body = {"uid": acct.uid, **INPUTS[combo](allow_image_server)}
    r = await client.post("/moderate", headers=acct.headers, json=body)
    assert r.status_code == 200, r.text
    out = r.json()
    check_response(out, acct.uid, "text" in combo, combo != "text")
    assert out["overall_moderation"]["safe"] == 1
    if "text" in combo:
        cov = out["text_moderation"]["coverage"]
        assert cov["backend"] == "local" and cov["scored"] == ["vulgar"]
        assert cov["sources"]["vulgar"].startswith("alt-profanity-check")
    if combo != "text":
        cov = out["image_moderation"]["coverage"]
        assert cov["scored"] == ["sexual", "violence/graphic", "nudity"]
        assert "underage" in cov["unscored"] and "self-harm" in cov["unscored"]
    # Local: underage is never measured, and says so.
    assert "underage" in out["overall_moderation"]["coverage"]["unscored"]
    bal, total = await audit(app, acct.uid)
    assert bal == total == 4_990_000


async def test_root_path_is_moderation(client: httpx.AsyncClient, funded: Account,
                                       moderation_worker: Any) -> None:
    r = await client.post("/", headers=funded.headers, json={"text": "you are a fucking idiot"})
    assert r.status_code == 200, r.text
    t = r.json()["text_moderation"]
    assert t["vulgar"] == 1 and t["safe"] == 0 and r.json()["overall_moderation"]["safe"] == 0


async def test_async_then_poll(client: httpx.AsyncClient, funded: Account, moderation_worker: Any) -> None:
    r = await client.post("/moderate", headers={**funded.headers, "Prefer": "respond-async"},
                          json={"text": "hello"})
    assert r.status_code == 202, r.text
    job_id = r.json()["job_id"]
    for _ in range(100):
        s = await client.get("/prediction-status", headers=funded.headers, params={"job_id": job_id})
        if s.json().get("updated"):
            break
        await asyncio.sleep(0.1)
    assert s.json()["replicate_status"] == "completed", s.text
    assert s.json()["output"]["text_moderation"]["coverage"]["scored"] == ["vulgar"]


async def test_task_row_keeps_no_image_bytes(client: httpx.AsyncClient, funded: Account,
                                             moderation_worker: Any, app: Any) -> None:
    r = await client.post("/moderate", headers=funded.headers,
                          json={"imageBase64": b64(PNG), "imageMime": "image/png"})
    assert r.status_code == 200, r.text
    row = await app.state.sn.db.fetchrow(
        "SELECT request FROM tasks WHERE uid = $1 ORDER BY id DESC LIMIT 1", funded.uid)
    req = row["request"]
    assert set(req["image"]) == {"sha256", "mime", "bytes", "source"} and req["image"]["bytes"] == len(PNG)
    assert len(str(req)) < 500


@pytest.mark.parametrize("combo", list(INPUTS))
async def test_openai_shape(combo: str, client: httpx.AsyncClient, make_account: MakeAccount,
                            openai_moderation: str, allow_image_server: ImageServer) -> None:
    from tests.fakes import openai_moderation as fake

    acct = await make_account()
    r = await client.post("/moderate", headers=acct.headers, json=INPUTS[combo](allow_image_server))
    assert r.status_code == 200, r.text
    out = r.json()
    has_text, has_image = "text" in combo, combo != "text"
    check_response(out, acct.uid, has_text, has_image)
    # One request, text and image together, the image as the bytes we checked (a data URL).
    assert len(fake.CALLS) == 1
    call = fake.CALLS[0]
    assert call["auth"] == "Bearer sk-mod-test-key"
    assert call["body"]["model"] == "omni-moderation-latest"
    types = [p["type"] for p in call["body"]["input"]]
    assert types == (["text"] if has_text else []) + (["image_url"] if has_image else [])
    if has_image:
        assert call["body"]["input"][-1]["image_url"]["url"].startswith("data:image/png;base64,")
    if has_text:
        cov = out["text_moderation"]["coverage"]
        assert cov["backend"] == "openai"
        assert set(CATEGORIES) | {"vulgar", "underage"} <= set(cov["scored"])
        assert cov["sources"]["vulgar"].startswith("alt-profanity-check")
        assert cov["sources"]["hate"].startswith("openai")
    if has_image:
        cov = out["image_moderation"]["coverage"]
        assert "sexual" in cov["scored"] and "nudity" in cov["scored"]
        # OpenAI applies these to text only: on an image they are not measured.
        assert {"harassment", "underage", "vulgar"} <= set(cov["unscored"])
        assert out["image_moderation"]["scores"]["harassment"] == 0
    if has_text and has_image:
        assert "sexual" in out["text_moderation"]["coverage"]["joint"]


async def test_openai_flags_violence(client: httpx.AsyncClient, funded: Account,
                                     openai_moderation: str) -> None:
    r = await client.post("/moderate", headers=funded.headers, json={"text": "I will kill you"})
    assert r.status_code == 200, r.text
    t = r.json()["text_moderation"]
    assert t["scores"]["violence"] == 0.93 and t["safe"] == 0
    assert r.json()["overall_moderation"]["safe"] == 0


async def test_openai_failure_refunds(client: httpx.AsyncClient, make_account: MakeAccount,
                                      openai_moderation: str, app: Any) -> None:
    acct = await make_account()
    r = await client.post("/moderate", headers=acct.headers, json={"text": "fail-500"})
    assert r.status_code == 502, r.text
    assert "OpenAI" in r.json()["error"]
    bal, total = await audit(app, acct.uid)
    assert bal == total == 5_000_000
