"""What more than one test file uses that is neither a fixture nor a fake: request helpers,
ledger reads and constants. Test files import from here (or from fixtures/ and fakes/), never
from one another: tests/test_suite_hygiene.py fails on an import of a test file."""

from __future__ import annotations

import asyncio
import base64
import re
import secrets
import socket
from typing import TYPE_CHECKING, Any

import httpx

from tests.fakes import chat_provider
from tests.fakes.replicate_files import PNG
from tests.fixtures.accounts import Account, audit

if TYPE_CHECKING:
    from playwright.async_api import Page

    from tests.fixtures.web import LiveServer

CHAT = "/chat-completion"
PASSWORD = "correct horse battery staple"  # what sign_up uses in the web UI

# The provider keys an account needs for every task-creating route below.
KEYS = {"openrouter_key": "sk-or-v1-test-key-0001", "chatgpt_key": "sk-test-0002", "replicate_key": "r8_x"}
_IMG = base64.b64encode(PNG).decode()
# Every task-creating route of the reference, with a body it would accept.
ROUTES: list[tuple[str, dict[str, Any]]] = [
    ("/chat-completion", {"model": "m", "prompt": "hi"}),
    ("/chatgpt-completion", {"model": "gpt-4o-mini", "prompt": "hi"}),
    ("/generate", {"model": "owner/model", "input": {"prompt": "x"}}),
    ("/face-swap/run", {"input": {"source_image": _IMG, "target_image": _IMG}}),
    ("/moderate", {"text": "hello"}),
    ("/", {"text": "hello"}),
]


def session_cookie(value: str) -> dict[str, str]:
    """Headers that send exactly this web session cookie, whatever the client's jar holds
    (httpx deprecates per-request ``cookies=``: it is unclear whether they persist)."""
    return {"Cookie": f"sn_session={value}"}


def calls_for(prompt: str) -> list[dict[str, Any]]:
    """The fake chat provider's calls whose messages carry ``prompt``."""
    return chat_provider.calls_with_prompt(prompt)


async def poll_until_done(client: httpx.AsyncClient, acct: Account, job_id: str,
                          timeout: float = 15) -> dict[str, Any]:
    deadline = asyncio.get_running_loop().time() + timeout
    while asyncio.get_running_loop().time() < deadline:
        r = await client.get("/prediction-status", params={"job_id": job_id}, headers=acct.headers)
        assert r.status_code == 200, r.text
        if r.json()["replicate_status"] != "in_progress":
            return dict(r.json())
        await asyncio.sleep(0.05)
    raise AssertionError(f"{job_id} still in progress after {timeout}s")


async def generate(client: httpx.AsyncClient, acct: Account, model: str, input_: dict[str, Any]) -> str:
    """POST /generate; the job id of the accepted (202) task."""
    r = await client.post("/generate", headers=acct.headers, json={"model": model, "input": input_})
    assert r.status_code == 202, r.text
    body = r.json()
    assert body["success"] is True and body["status"] == "in_progress"
    assert body["get"] == f"http://gateway.test/prediction-status?job_id={body['job_id']}"
    return str(body["job_id"])


async def wait_status(client: httpx.AsyncClient, acct: Account, job_id: str, timeout: float = 15,
                      path: str = "/prediction-status") -> dict[str, Any]:
    for _ in range(int(timeout / 0.05)):
        r = await client.get(path, params={"job_id": job_id}, headers=acct.headers)
        assert r.status_code == 200, r.text
        body: dict[str, Any] = r.json()
        if body["replicate_status"] != "in_progress":
            return body
        await asyncio.sleep(0.05)
    raise AssertionError(f"{job_id} still in progress")


async def refunds(app: Any, job_id: str) -> int:
    """How many refunds the task of ``job_id`` got (a failed or canceled task: exactly one)."""
    return int(await app.state.sn.db.fetchval(
        "SELECT count(*) FROM ledger l JOIN tasks t ON t.id = l.task_id "
        "WHERE t.job_id = $1 AND l.kind = 'refund'", job_id))


async def balanced(app: Any, uid: str) -> int:
    """The account's balance, once the ledger audit agrees with it."""
    balance, total = await audit(app, uid)
    assert balance == total
    return balance


async def payments(app: Any, uid: str) -> list[Any]:
    return list(await app.state.sn.db.fetch("SELECT * FROM payments WHERE uid = $1 ORDER BY id", uid))


class FakeDNS:
    """Answers for made-up names, in order (the last answer repeats); other names resolve as usual."""

    def __init__(self, loop: asyncio.AbstractEventLoop, answers: dict[str, list[str]]) -> None:
        self.real = loop.getaddrinfo
        self.answers = answers
        self.calls: list[str] = []

    async def getaddrinfo(self, host: Any, port: Any, *args: Any, **kw: Any) -> Any:
        name = host.decode() if isinstance(host, bytes) else host
        if name not in self.answers:
            return await self.real(host, port, *args, **kw)
        seq = self.answers[name]
        ip = seq[min(self.calls.count(name), len(seq) - 1)]
        self.calls.append(name)
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (ip, int(port or 0)))]


async def sign_up(page: Page, ui: LiveServer, email: str | None = None) -> str:
    """Sign up in the web UI (a fresh email unless given); the new account's uid, on its dashboard."""
    from playwright.async_api import expect  # the browser tests' dependency, loaded by them only

    await page.goto(ui.url + "/ui/signup")
    await page.get_by_label("Email").fill(email or f"user-{secrets.token_hex(4)}@example.com")
    await page.get_by_label("Password").fill(PASSWORD)
    await page.get_by_role("button", name="Create account").click()
    await expect(page.locator("#new-key")).to_have_text(re.compile(r"^sn_"))
    uid = (await page.locator("#new-uid").text_content()) or ""
    await page.get_by_role("link", name="Go to your dashboard").click()
    await expect(page.locator("#balance")).to_have_text("$5.00")
    return uid
