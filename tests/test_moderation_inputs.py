"""Bad moderation inputs: each is a 400 (or 413) that says why, and charges nothing."""

from __future__ import annotations

import base64
from typing import Any

import httpx
import pytest

from tests.fixtures.accounts import MakeAccount, audit
from tests.fixtures.moderation import b64, landscape

PNG = landscape()
JPEG = landscape("JPEG")

CASES: dict[str, tuple[dict[str, Any], int, str]] = {
    "nothing": ({}, 400, "at least one of text, imageUrl or imageBase64"),
    "empty text only": ({"text": ""}, 400, "at least one"),
    "both images": ({"imageUrl": "https://example.com/a.png", "imageBase64": b64(PNG)}, 400, "one image"),
    "bad base64": ({"imageBase64": "iVBORw0K!!!notbase64", "imageMime": "image/png"}, 400, "not valid base64"),
    "bad padding": ({"imageBase64": b64(PNG)[:-1], "imageMime": "image/png"}, 400, "not valid base64"),
    "not an image": ({"imageBase64": b64(b"hello world, plain text"), "imageMime": "image/png"}, 400,
                     "not a PNG, JPEG"),
    "mime mismatch": ({"imageBase64": b64(JPEG), "imageMime": "image/png"}, 400,
                      "imageMime says image/png but the imageBase64 bytes are image/jpeg"),
    "unsupported mime": ({"imageBase64": b64(PNG), "imageMime": "image/tiff"}, 400, "not supported"),
    "truncated png": ({"imageBase64": b64(PNG[: len(PNG) // 2]), "imageMime": "image/png"}, 400, "truncated"),
    "truncated jpeg": ({"imageBase64": b64(JPEG[: len(JPEG) // 2]), "imageMime": "image/jpeg"}, 400, "truncated"),
    "text too long": ({"text": "a" * 100_001}, 400, "Invalid text"),
    "ftp url": ({"imageUrl": "ftp://example.com/a.png"}, 400, "http or https"),
}


@pytest.mark.parametrize("case", list(CASES))
async def test_bad_input(case: str, client: httpx.AsyncClient, make_account: MakeAccount, app: Any) -> None:
    body, status, message = CASES[case]
    acct = await make_account()
    r = await client.post("/moderate", headers=acct.headers, json=body)
    assert r.status_code == status, r.text
    assert message in r.json()["error"], r.json()
    bal, total = await audit(app, acct.uid)
    assert bal == total == 5_000_000


async def test_20mb_image_refused_uncharged(client: httpx.AsyncClient, make_account: MakeAccount, app: Any) -> None:
    acct = await make_account()
    big = b"\x89PNG\r\n\x1a\n" + bytes(20 << 20)
    r = await client.post("/moderate", headers=acct.headers,
                          json={"imageBase64": base64.b64encode(big).decode(), "imageMime": "image/png"})
    assert r.status_code == 413, r.text
    assert "larger than" in r.json()["error"]
    bal, total = await audit(app, acct.uid)
    assert bal == total == 5_000_000


async def test_image_over_cap_inside_body_limit(client: httpx.AsyncClient, make_account: MakeAccount,
                                                app: Any) -> None:
    # 11 MB of image in a 15 MB body: the body is accepted, the image cap (10 MB) is not.
    acct = await make_account()
    big = b"\x89PNG\r\n\x1a\n" + bytes(11 << 20)
    r = await client.post("/moderate", headers=acct.headers,
                          json={"imageBase64": base64.b64encode(big).decode(), "imageMime": "image/png"})
    assert r.status_code == 413, r.text
    assert "imageBase64 decodes to more than" in r.json()["error"]


async def test_wrapped_base64_and_data_url_accepted(client: httpx.AsyncClient, make_account: MakeAccount,
                                                    moderation_worker: Any) -> None:
    acct = await make_account()
    wrapped = base64.encodebytes(PNG).decode()  # 76-column lines, as MIME tools write it
    r = await client.post("/moderate", headers=acct.headers, json={"imageBase64": wrapped, "imageMime": "image/png"})
    assert r.status_code == 200, r.text
    r = await client.post("/moderate", headers=acct.headers, json={"imageBase64": "data:image/png;base64," + b64(PNG)})
    assert r.status_code == 200, r.text


async def test_no_credential_is_401(client: httpx.AsyncClient) -> None:
    r = await client.post("/moderate", json={"text": "hi"})
    assert r.status_code == 401
