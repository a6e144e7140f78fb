"""POST /generate and /face-swap/run through the media and poll pools against the simulator."""

from __future__ import annotations

import base64
from typing import Any

import httpx

from tests.fakes.replicate import VERSION
from tests.fakes.replicate_files import PNG
from tests.fixtures.accounts import Account, audit
from tests.fixtures.media import Sim
from tests.helpers import generate, wait_status


async def test_generate_by_model_rehosts_output(client: httpx.AsyncClient, replicate_account: Account,
                                                sim: Sim, media_workers: Any, app: Any) -> None:
    job = await generate(client, replicate_account, "black-forest-labs/flux-schnell",
                         {"prompt": "a red apple", "sim": {"output": "nested"}})
    body = await wait_status(client, replicate_account, job)
    assert body["replicate_status"] == "completed" and body["updated"] is True
    out = body["output"]
    assert out["seed"] == 7  # structure kept, non-URL values untouched
    assert out["image"] == f"http://gateway.test/files/{job}/0.png"
    assert out["extra"]["thumbs"] == [f"http://gateway.test/files/{job}/1.png"]
    r = await client.get(out["image"].removeprefix("http://gateway.test"))
    assert r.status_code == 200 and r.content == PNG + b"out-0.png"
    assert r.headers["content-type"] == "image/png"
    (create,) = await sim.creates()
    assert create["path"] == "/v1/models/black-forest-labs/flux-schnell/predictions"
    assert create["body"]["input"] == {"prompt": "a red apple", "sim": {"output": "nested"}}
    assert "version" not in create["body"]
    assert create["cancel_after"] in ("1800s", "1799s")
    assert await audit(app, replicate_account.uid) == (4_980_000, 4_980_000)


async def test_generate_by_version_and_pinned_model(client: httpx.AsyncClient, replicate_account: Account,
                                                    sim: Sim, media_workers: Any) -> None:
    j1 = await generate(client, replicate_account, VERSION, {"prompt": "x", "sim": {"output": "files"}})
    j2 = await generate(client, replicate_account, f"adirik/realvisxl:{VERSION}", {"prompt": "y",
                                                                                  "sim": {"output": "text"}})
    b1 = await wait_status(client, replicate_account, j1)
    b2 = await wait_status(client, replicate_account, j2)
    assert b1["output"] == [f"http://gateway.test/files/{j1}/0.png", f"http://gateway.test/files/{j1}/1.png"]
    assert b2["output"] == "hello from the simulator"
    creates = await sim.creates()
    assert {c["path"] for c in creates} == {"/v1/predictions"}
    assert all(c["body"]["version"] == VERSION for c in creates)


async def test_provider_failure_refunds_once(client: httpx.AsyncClient, replicate_account: Account,
                                             sim: Sim, media_workers: Any, app: Any) -> None:
    j1 = await generate(client, replicate_account, "owner/model", {"sim": {"outcome": "failed"}})
    j2 = await generate(client, replicate_account, "sim/invalid", {})
    j3 = await generate(client, replicate_account, "owner/model", {"sim": {"outcome": "aborted"}})
    for j in (j1, j2, j3):
        body = await wait_status(client, replicate_account, j)
        assert body["replicate_status"] == "failed" and body["error"]
    assert "simulated failure" in (await wait_status(client, replicate_account, j1))["error"]
    assert "prompt is required" in (await wait_status(client, replicate_account, j2))["error"]
    assert await audit(app, replicate_account.uid) == (5_000_000, 5_000_000)
    r = await client.get("/billing-history", headers=replicate_account.headers)
    kinds = [h["kind"] for h in r.json()["history"]]
    assert kinds.count("refund") == 3 and kinds.count("charge") == 3


async def test_create_429_is_retried_after_retry_after(client: httpx.AsyncClient, replicate_account: Account,
                                                       sim: Sim, media_workers: Any) -> None:
    job = await generate(client, replicate_account, "sim/throttled", {"sim": {"output": "text"}})
    body = await wait_status(client, replicate_account, job)
    assert body["replicate_status"] == "completed"
    creates = await sim.creates()
    assert len(creates) == 2 and creates[1]["at"] - creates[0]["at"] >= 0.9
    assert len(await sim.predictions()) == 1


async def test_poll_429_honoured(client: httpx.AsyncClient, replicate_account: Account, sim: Sim,
                                 media_workers: Any) -> None:
    await sim.op("config", {"get_429": 2})
    job = await generate(client, replicate_account, "owner/model", {"sim": {"output": "text"}})
    assert (await wait_status(client, replicate_account, job))["replicate_status"] == "completed"


async def test_validation_and_limits(client: httpx.AsyncClient, replicate_account: Account, app: Any,
                                     sim: Sim) -> None:
    h = replicate_account.headers
    r = await client.post("/generate", headers=h, json={"model": "not a model", "input": {}})
    assert r.status_code == 400 and "model" in r.json()["error"]
    r = await client.post("/generate", headers=h, json={"model": "a/b"})
    assert r.status_code == 400 and r.json()["error"] == "Missing input parameter"
    big = app.state.sn.settings.max_media_body_bytes
    r = await client.post("/generate", headers={**h, "content-type": "application/json"},
                          content=b"{" + b" " * big + b"}")
    assert r.status_code == 413
    no_key = await client.post("/accounts", headers={"Authorization": "Bearer test-admin-token"})
    k = {"Authorization": f"Bearer {no_key.json()['api_key']}"}
    r = await client.post("/generate", headers=k, json={"model": "a/b", "input": {}})
    assert r.status_code == 400 and "replicate_key" in r.json()["error"]
    assert await audit(app, replicate_account.uid) == (5_000_000, 5_000_000)


def real_png() -> bytes:
    """A PNG that decodes (the simulator's PNG only has to look like one)."""
    import io

    from PIL import Image

    out = io.BytesIO()
    Image.new("RGB", (2, 2), "blue").save(out, format="PNG")
    return out.getvalue()


async def test_face_swap(client: httpx.AsyncClient, replicate_account: Account, sim: Sim,
                         media_workers: Any, app: Any) -> None:
    img = base64.b64encode(real_png()).decode()
    h = replicate_account.headers
    r = await client.post("/face-swap/run", headers=h, json={"input": {"source_image": "!!notbase64",
                                                                       "target_image": img}})
    assert r.status_code == 400 and "source_image" in r.json()["error"]
    r = await client.post("/face-swap/run", headers=h, json={"input": {
        "source_image": img, "target_image": base64.b64encode(b"just some text, not an image").decode()}})
    assert r.status_code == 400 and "not an image" in r.json()["error"]
    assert await audit(app, replicate_account.uid) == (5_000_000, 5_000_000)  # nothing charged
    r = await client.post("/face-swap/run", headers=h, json={"input": {
        "source_image": img, "target_image": "data:image/png;base64," + img, "background_enhance": True}})
    assert r.status_code == 202, r.text
    job = r.json()["job_id"]
    body = await wait_status(client, replicate_account, job, path="/face-swap/status")
    assert body["replicate_status"] == "completed"
    assert body["output"] == f"http://gateway.test/files/{job}/0.png"
    (create,) = await sim.creates()
    s = app.state.sn.settings
    assert create["body"]["version"] == s.face_swap_model.split(":")[1]
    inp = create["body"]["input"]
    assert inp["local_source"] == "data:image/png;base64," + img
    assert inp["local_target"] == "data:image/png;base64," + img
    assert inp["background_enhance"] is True


async def test_face_swap_images_must_decode(client: httpx.AsyncClient, replicate_account: Account, app: Any,
                                            sim: Sim) -> None:
    import io

    from PIL import Image

    bmp = io.BytesIO()
    Image.new("RGB", (4, 4), "red").save(bmp, format="BMP")
    good = base64.b64encode(bmp.getvalue()).decode()
    h = replicate_account.headers
    for bad in (PNG[:40], b"BM but only text after the magic bytes", bmp.getvalue()[:30]):
        r = await client.post("/face-swap/run", headers=h, json={"input": {
            "source_image": good, "target_image": base64.b64encode(bad).decode()}})
        assert r.status_code == 400, r.text
        assert "target_image" in r.json()["error"] and "decode" in r.json()["error"]
    assert await audit(app, replicate_account.uid) == (5_000_000, 5_000_000)  # nothing charged
    r = await client.post("/face-swap/run", headers=h, json={"input": {"source_image": good,
                                                                       "target_image": good}})
    assert r.status_code == 202, r.text
    # No worker runs here: take the job off the queue, or a later test's worker would run it.
    task_id = await app.state.sn.db.fetchval("SELECT id FROM tasks WHERE job_id = $1", r.json()["job_id"])
    assert (await client.post(f"/tasks/{task_id}/cancel", headers=h)).json()["status"] == "canceled"
