"""The web UI in a real browser (Debian's Chromium via Playwright) against a real ingress
process, the test stack's Postgres/Redis, in-process workers and the fake providers.
Every test leaves screenshots in test-artifacts/."""

from __future__ import annotations

import json
import re
import secrets
from typing import Any

import httpx
from playwright.async_api import Page, expect
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse
from starlette.routing import Route

from tests.fixtures.servers import ServerThread
from tests.fixtures.web import LiveServer, shot
from tests.helpers import PASSWORD, sign_up


async def set_provider_key(page: Page, ui: LiveServer, label: str, name: str, value: str) -> None:
    await page.goto(ui.url + "/ui/keys")
    await page.get_by_label(label).fill(value)
    await page.get_by_role("button", name="Save provider keys").click()
    await expect(page.locator(f"#masked-{name}")).not_to_have_text("none")


async def playground(page: Page, ui: LiveServer, endpoint: str) -> None:
    await page.goto(ui.url + "/ui/playground")
    await page.get_by_label("Endpoint").select_option(endpoint)
    await page.get_by_role("button", name="Send").click()


async def test_sign_up_chat_in_playground_and_pay(page: Page, ui: LiveServer, chat_worker: Any) -> None:
    uid = await sign_up(page, ui)
    await expect(page.locator("#uid")).to_have_text(uid)
    await shot(page, "01-dashboard-new-account")
    await set_provider_key(page, ui, "OpenRouter key", "openrouter_key", "sk-or-v1-browser-test-0001")
    await expect(page.locator("#masked-openrouter_key")).to_contain_text("…")
    await shot(page, "02-keys-openrouter-set")
    await playground(page, ui, "chat")
    await expect(page.locator("#play-text")).to_have_text("echo: Explain quantum computing in 3 sentences.")
    await expect(page.locator("#play-status")).to_have_text("HTTP 200")
    await expect(page.locator("#play-balance")).to_have_text("$4.98")
    code = await page.locator("#play-code").text_content() or ""
    assert code.startswith(f'curl -X POST "{ui.url}/chat-completion"') and uid in code
    await page.get_by_role("tab", name="Python").click()
    await expect(page.locator("#play-code")).to_contain_text("requests.post(")
    await shot(page, "03-playground-chat")
    # The same call fired and polled (Prefer: respond-async), then looked up by its job_id.
    await page.get_by_label("Answer at once, then poll (Prefer: respond-async)").check()
    await expect(page.locator("#play-code")).to_contain_text('"Prefer": "respond-async"')
    await page.get_by_role("button", name="Send").click()
    await expect(page.locator("#play-status")).to_contain_text("completed (polled")
    await expect(page.locator("#play-text")).to_have_text("echo: Explain quantum computing in 3 sentences.")
    await expect(page.locator("#play-balance")).to_have_text("$4.96")
    await page.get_by_label("Endpoint").select_option("status")
    job = await page.get_by_label("job_id").input_value()
    assert len(job) > 10
    await page.get_by_role("button", name="Send").click()
    await expect(page.locator("#play-answer")).to_contain_text(job)
    await page.goto(ui.url + "/")
    await expect(page.locator("#balance")).to_have_text("$4.96")
    await expect(page.locator("#latest tr")).to_have_count(2)
    await expect(page.locator("#chart canvas")).to_have_count(1)
    await expect(page.locator("#chart-total")).to_contain_text("$0.04")
    await shot(page, "04-dashboard-after-chat")


async def test_generated_image_shows_on_the_task_page(page: Page, ui: LiveServer, media_workers: Any,
                                                      sim: Any) -> None:
    await sign_up(page, ui)
    await set_provider_key(page, ui, "Replicate key", "replicate_key", f"r8_{secrets.token_hex(12)}")
    await playground(page, ui, "generate")
    await expect(page.locator("#play-status")).to_contain_text("completed", timeout=20_000)
    await expect(page.locator("#play-media img")).to_have_count(1)
    await shot(page, "05-playground-generate")
    await page.goto(ui.url + "/ui/tasks")
    await page.get_by_label("Kind").select_option("generate")
    await page.get_by_role("button", name="Filter").click()
    await expect(page.locator("#task-rows tr")).to_have_count(1)
    await page.locator("#task-rows a").first.click()
    img = page.locator("#task-output img")
    await expect(img).to_have_count(1)
    src = await img.get_attribute("src") or ""
    assert src.startswith(ui.url + "/files/"), src
    loaded = await img.evaluate("i => i.complete && i.naturalWidth > 0")
    assert loaded, "the re-hosted image did not load"
    await expect(page.locator("#task-meta")).to_contain_text("$0.02")
    await shot(page, "06-task-page-image")


async def test_moderation_needs_no_provider_key(page: Page, ui: LiveServer, moderation_worker: Any,
                                                tmp_path: Any) -> None:
    from tests.fixtures.moderation import landscape

    await sign_up(page, ui)
    await playground(page, ui, "moderate")
    await expect(page.locator("#play-status")).to_have_text("HTTP 200", timeout=20_000)
    answer = json.loads(await page.locator("#play-answer").text_content() or "{}")
    assert answer["overall_moderation"]["safe"] in (0, 1), answer
    await expect(page.locator("#play-balance")).to_have_text("$4.99")
    await shot(page, "07-playground-moderation")
    # With a picked image: sent as imageBase64 + imageMime, scored in its own section.
    path = tmp_path / "scene.png"
    path.write_bytes(landscape())
    await page.get_by_label("Image file (optional, sent as imageBase64)").set_input_files(str(path))
    await page.get_by_role("button", name="Send").click()
    await expect(page.locator("#play-answer")).to_contain_text("image_moderation", timeout=20_000)
    await expect(page.locator("#play-balance")).to_have_text("$4.98")


async def test_create_and_revoke_an_api_key(page: Page, ui: LiveServer) -> None:
    await sign_up(page, ui)
    await page.goto(ui.url + "/ui/keys")
    await expect(page.locator("#key-rows tr")).to_have_count(1)
    await page.get_by_role("button", name="Create API key").click()
    key = page.locator("#new-key")
    await expect(key).to_have_text(re.compile(r"^sn_"))
    new_key = await key.text_content() or ""
    await expect(page.locator("#key-rows tr")).to_have_count(2)
    await shot(page, "08-keys-created")
    async with httpx.AsyncClient(base_url=ui.url) as http:
        r = await http.get("/balance", headers={"Authorization": f"Bearer {new_key}"})
        assert r.status_code == 200 and r.json() == {"balance": 5.0}
        # Revoking asks first: dismissed, the key still works.
        page.once("dialog", lambda d: d.dismiss())
        await page.get_by_role("button", name=f"Revoke key {new_key[:8]}").click()
        await expect(page.locator("#key-rows")).not_to_contain_text("revoked")
        assert (await http.get("/balance", headers={"Authorization": f"Bearer {new_key}"})).status_code == 200
        page.once("dialog", lambda d: d.accept())
        await page.get_by_role("button", name=f"Revoke key {new_key[:8]}").click()
        await expect(page.locator("#key-rows")).to_contain_text("revoked")
        r = await http.get("/balance", headers={"Authorization": f"Bearer {new_key}"})
        assert r.status_code == 401, r.text
    await shot(page, "09-keys-revoked")
    # Storage: the form shows the provider's own fields, and a failed check says why.
    await expect(page.get_by_label("Bucket")).to_be_hidden()
    await page.get_by_label("Provider").select_option("s3")
    await expect(page.get_by_label("Storage zone")).to_be_hidden()
    await page.get_by_label("Bucket").fill("my-bucket")
    await page.get_by_label("Endpoint URL (optional)").fill("http://127.0.0.1:9")
    await page.get_by_label("Access key id").fill("AKIAEXAMPLE")
    await page.get_by_label("Secret access key").fill("secret")
    await page.get_by_role("button", name="Check and save storage").click()
    await expect(page.locator("#storage-error")).to_contain_text("nothing saved")
    await expect(page.locator("#st-current")).to_have_text("provider: default")


async def test_sign_out_then_pages_ask_to_sign_in(page: Page, ui: LiveServer) -> None:
    await sign_up(page, ui)
    await page.get_by_role("button", name="Sign out").click()
    await expect(page).to_have_url(ui.url + "/ui/signin")
    for path in ("/", "/ui/keys", "/ui/playground", "/ui/billing", "/ui/tasks"):
        await page.goto(ui.url + path)
        assert page.url.startswith(ui.url + "/ui/signin?next="), (path, page.url)
    await expect(page.get_by_role("heading", name="Sign in")).to_be_visible()
    await shot(page, "10-signed-out")
    r = await page.request.get(ui.url + "/balance")
    assert r.status == 401


async def test_request_from_another_origin_is_refused(page: Page, ui: LiveServer) -> None:
    await sign_up(page, ui)
    # Another port on the same host: a different origin, but the same site, so SameSite=Lax
    # still sends the cookie; only the CSRF token and the Origin check stand in the way.
    form = ('<form id="f" method="post" enctype="text/plain" action="{u}/api-keys">'
            '<input name=\'{{"openrouter_key":"sk-evil-\' value=\'x"}}\'></form>')

    async def evil(request: Request) -> HTMLResponse:
        return HTMLResponse(f"""<!doctype html><body><p id="out">…</p>{form.format(u=ui.url)}<script>
          fetch("{ui.url}/keys", {{method: "POST", mode: "no-cors", credentials: "include",
                 headers: {{"Content-Type": "text/plain"}}, body: "{{}}"}})
            .then(() => {{ document.getElementById("out").textContent = "sent"; }});
        </script></body>""")

    with ServerThread(Starlette(routes=[Route("/", evil)])) as attacker:
        await page.goto(attacker.url + "/")
        await expect(page.locator("#out")).to_have_text("sent")
        async with page.expect_navigation():
            await page.evaluate("document.getElementById('f').submit()")
        body = await page.locator("body").text_content() or ""
        assert "Cross-site request refused" in body or "X-CSRF-Token" in body, body
        await shot(page, "11-csrf-refused")
    await page.goto(ui.url + "/ui/keys")
    await expect(page.locator("#key-rows tr")).to_have_count(1)  # POST /keys did not run
    await expect(page.locator("#masked-openrouter_key")).to_have_text("none")


async def test_phone_width_labels_and_keyboard(browser: Any, ui: LiveServer) -> None:
    ctx = await browser.new_context(viewport={"width": 390, "height": 844}, is_mobile=True, has_touch=True)
    page = await ctx.new_page()
    email = f"phone-{secrets.token_hex(4)}@example.com"
    await sign_up(page, ui, email)
    for path, name in (("/", "12-phone-dashboard"), ("/ui/playground", "13-phone-playground"),
                       ("/ui/keys", "14-phone-keys"), ("/ui/billing", "15-phone-billing"),
                       ("/ui/tasks", "16-phone-tasks"), ("/ui/docs", "17-phone-docs")):
        await page.goto(ui.url + path)
        await page.wait_for_load_state("networkidle")
        overflow = await page.evaluate("document.documentElement.scrollWidth - window.innerWidth")
        assert overflow <= 0, f"{path} scrolls sideways by {overflow}px at phone width"
        unlabeled = await page.evaluate("""[...document.querySelectorAll('input, select, textarea, button')]
            .filter(e => e.type !== 'hidden' && e.offsetParent !== null)
            .filter(e => !(e.labels && e.labels.length) && !e.getAttribute('aria-label') && !e.textContent.trim())
            .map(e => e.outerHTML.slice(0, 80))""")
        assert unlabeled == [], f"controls without a label on {path}: {unlabeled}"
        await shot(page, name)
    # Keyboard only: sign out, then sign in with Tab and Enter.
    await page.get_by_role("button", name="Sign out").press("Enter")
    await expect(page).to_have_url(ui.url + "/ui/signin")
    await page.keyboard.press("Tab")
    assert await page.evaluate("document.activeElement.textContent") == "Skip to content"
    await page.get_by_label("Email").focus()
    await page.keyboard.type(email)
    await page.keyboard.press("Tab")
    await page.keyboard.type(PASSWORD)
    await page.keyboard.press("Enter")
    await expect(page.locator("#balance")).to_have_text("$5.00")
    await ctx.close()


async def test_face_swap_with_two_file_pickers(page: Page, ui: LiveServer, media_workers: Any, sim: Any,
                                               tmp_path: Any) -> None:
    from tests.fixtures.moderation import landscape

    await sign_up(page, ui)
    await set_provider_key(page, ui, "Replicate key", "replicate_key", f"r8_{secrets.token_hex(12)}")
    await page.goto(ui.url + "/ui/playground")
    await page.get_by_label("Endpoint").select_option("faceswap")
    for name, seed in (("source_image", 1), ("target_image", 2)):
        path = tmp_path / f"{name}.png"
        path.write_bytes(landscape(seed=seed))
        await page.get_by_label(f"{name} (image file)").set_input_files(str(path))
    await page.get_by_role("button", name="Send").click()
    await expect(page.locator("#play-status")).to_contain_text("completed", timeout=20_000)
    await expect(page.locator("#play-media img")).to_have_count(1)
    (create,) = await sim.creates()
    sent = create["body"]["input"]
    assert sent["local_source"].startswith("data:image/png;base64,iVBOR")
    assert sent["local_target"] != sent["local_source"]
    # The snippet shortens the images instead of pasting megabytes of base64.
    code = await page.locator("#play-code").text_content() or ""
    assert '"source_image": "iVBOR' in code and len(code) < 3000
    await shot(page, "20-playground-face-swap")


async def test_task_page_follows_a_running_task_then_cancel_and_delete(
        page: Page, ui: LiveServer, media_workers: Any, sim: Any) -> None:
    uid = await sign_up(page, ui)
    await set_provider_key(page, ui, "Replicate key", "replicate_key", f"r8_{secrets.token_hex(12)}")
    await page.goto(ui.url + "/ui/playground")
    await page.get_by_label("Endpoint").select_option("generate")
    await page.get_by_label("JSON body").fill(json.dumps(
        {"uid": uid, "model": "owner/model", "input": {"prompt": "x", "sim": {"outcome": "never"}}}))
    await page.get_by_role("button", name="Send").click()
    await expect(page.locator("#play-status")).to_contain_text("in_progress (polled")
    await page.goto(ui.url + "/ui/tasks?status=in_progress")
    await page.locator("#task-rows a").first.click()
    await expect(page.locator("#task-meta")).to_contain_text("in progress")
    await expect(page.get_by_role("button", name="Delete")).to_be_hidden()
    await shot(page, "21-task-running")
    await page.get_by_role("button", name="Cancel").click()
    await expect(page.locator("#task-meta")).to_contain_text("canceled")
    await expect(page.locator("#task-meta")).to_contain_text("yes (the charge was returned)")
    await expect(page.get_by_role("button", name="Cancel")).to_be_hidden()
    await shot(page, "22-task-canceled")
    page.once("dialog", lambda d: d.accept())
    await page.get_by_role("button", name="Delete").click()
    await expect(page).to_have_url(ui.url + "/ui/tasks")
    await expect(page.locator("#task-rows")).to_contain_text("No tasks match.")
    await page.goto(ui.url + "/")
    await expect(page.locator("#balance")).to_have_text("$5.00")


async def test_every_playground_endpoint_renders_and_free_reads_answer(page: Page, ui: LiveServer) -> None:
    uid = await sign_up(page, ui)
    await page.goto(ui.url + "/ui/playground")
    options = await page.locator("#endpoint option").evaluate_all("os => os.map(o => o.value)")
    assert len(options) >= 18
    for value in options:
        await page.get_by_label("Endpoint").select_option(value)
        code = await page.locator("#play-code").text_content() or ""
        assert code.startswith("curl -X ") and ui.url in code, (value, code)
    for value in ("balance", "apikeys", "tasks", "history", "threshold"):
        await page.get_by_label("Endpoint").select_option(value)
        await page.get_by_role("button", name="Send").click()
        await expect(page.locator("#play-status")).to_have_text("HTTP 200")
    await page.get_by_label("Endpoint").select_option("balance")
    await page.get_by_role("tab", name="JavaScript").click()
    await expect(page.locator("#play-code")).to_contain_text(f"{ui.url}/balance?uid={uid}")
    await expect(page.locator("#play-code")).to_contain_text("await fetch(")
    # A body that is not JSON is reported, not sent.
    await page.get_by_label("Endpoint").select_option("chat")
    await page.get_by_label("JSON body").fill("{not json")
    await page.get_by_role("button", name="Send").click()
    await expect(page.locator("#play-status")).to_have_text("invalid JSON")
    # A task id left empty is said, not sent as GET /tasks/ (which lists every task).
    await page.get_by_label("Endpoint").select_option("task")
    await page.get_by_role("button", name="Send").click()
    await expect(page.locator("#play-status")).to_have_text("not sent")
    await expect(page.locator("#play-answer")).to_contain_text("Enter the id first")
    # No answer at all (the network gone): the error is shown and Send works again.
    await page.get_by_label("Endpoint").select_option("balance")
    await page.route("**/balance*", lambda route: route.abort())
    await page.get_by_role("button", name="Send").click()
    await expect(page.locator("#play-answer")).to_contain_text("could not be reached")
    await expect(page.get_by_role("button", name="Send")).to_be_enabled()


async def test_docs_are_public_and_sign_in_takes_an_api_key(page: Page, ui: LiveServer,
                                                            make_account: Any) -> None:
    await page.goto(ui.url + "/ui/docs")
    await expect(page.locator("#docs-body")).to_contain_text("/chat-completion")
    await expect(page.locator("#docs-body")).to_contain_text("DELETE/keys/{prefix}")
    await shot(page, "23-docs")
    acct = await make_account()
    await page.goto(ui.url + "/ui/keys")
    await page.get_by_text("Sign in with an API key instead").click()
    await page.get_by_label("SyncNode API key").fill("sn_wrong")
    await page.get_by_role("button", name="Sign in with key").click()
    await expect(page.locator("#signin-key-error")).to_have_text("Invalid API key")
    await page.get_by_label("SyncNode API key").fill(acct.api_key)
    await page.get_by_role("button", name="Sign in with key").click()
    await expect(page).to_have_url(ui.url + "/ui/keys")  # back where the sign-in started
    await expect(page.locator("#uid")).to_have_text(acct.uid)


async def test_the_python_snippet_sends_the_body_as_typed(page: Page, ui: LiveServer) -> None:
    """true / false / null become True / False / None in the Python code, and only outside
    strings: "is this true?" was copied as "is this True?", another prompt than the one sent."""
    import ast

    await sign_up(page, ui)
    await page.goto(ui.url + "/ui/playground")
    body = {"model": "m", "messages": [{"role": "user", "content": 'is this true, false or null? say "true"'}],
            "stream": False, "n": None, "logprobs": True}
    await page.get_by_label("JSON body").fill(json.dumps(body))
    await page.get_by_role("tab", name="Python").click()
    code = await page.locator("#play-code").text_content() or ""
    literal = code.split("json=", 1)[1].rsplit(",\n)", 1)[0]
    assert ast.literal_eval(literal) == body, code


async def test_a_failed_task_does_not_wait_for_output(page: Page, ui: LiveServer, chat_worker: Any) -> None:
    """A failed task's page said "No output yet.", as if something were still coming."""
    await sign_up(page, ui)
    await set_provider_key(page, ui, "OpenRouter key", "openrouter_key", "sk-or-v1-browser-test-0002")
    await page.goto(ui.url + "/ui/playground")
    body = {"model": "reject-400", "messages": [{"role": "user", "content": "x"}]}
    await page.get_by_label("JSON body").fill(json.dumps(body))
    await page.get_by_role("button", name="Send").click()
    await expect(page.locator("#play-status")).to_have_text("HTTP 400")
    await page.goto(ui.url + "/ui/tasks")
    await page.locator("#task-rows a").first.click()
    await expect(page.locator("#task-meta")).to_contain_text("failed")
    await expect(page.locator("#task-output")).to_have_text("No output.")


async def test_pages_load_without_a_missing_resource(page: Page, ui: LiveServer) -> None:
    """Every page asked for /favicon.ico, a 404 logged as an error in the browser's console."""
    failed: list[str] = []
    page.on("console", lambda m: failed.append(m.text) if "Failed to load resource" in m.text else None)
    for path in ("/ui/signin", "/ui/signup", "/ui/docs"):
        await page.goto(ui.url + path)
        await page.wait_for_load_state("networkidle")
    assert not failed, failed
