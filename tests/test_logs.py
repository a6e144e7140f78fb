"""Logs an operator can use: JSON lines with the request and job they belong to, request ids
accepted, made and carried into jobs, and no credential or image ever written out."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import os
import re
import secrets
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from jobs.logs import JOB_ID, REQUEST_ID, UID, JsonFormatter, TextFormatter
from tests.fixtures.accounts import Account
from tests.fixtures.moderation import b64, landscape
from tests.helpers import CHAT, wait_status

GENERATED = re.compile(r"[0-9a-f]{32}")
Line = dict[str, Any]


class Captured:
    """Every record the process logs while the fixture is active, as the JSON formatter writes it."""

    def __init__(self) -> None:
        self.buf = io.StringIO()

    def text(self) -> str:
        return self.buf.getvalue()

    def lines(self) -> list[Line]:
        return [json.loads(line) for line in self.text().splitlines() if line]

    async def wait_for(self, match: Callable[[Line], bool], timeout: float = 5.0) -> list[Line]:
        """Lines matching ``match``: a job's own line is written just after its result is announced."""
        deadline = time.monotonic() + timeout
        while True:
            found = [line for line in self.lines() if match(line)]
            if found or time.monotonic() > deadline:
                return found
            await asyncio.sleep(0.02)


@pytest.fixture
def json_logs(app: Any) -> Iterator[Captured]:
    cap = Captured()
    handler = logging.StreamHandler(cap.buf)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    level = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)  # stricter than production: nothing below INFO may leak either
    yield cap
    root.removeHandler(handler)
    root.setLevel(level)


async def test_json_lines_carry_request_uid_job_pool_outcome_and_duration(
        client: httpx.AsyncClient, funded: Account, chat_worker: Any, json_logs: Captured) -> None:
    rid = f"it-{uuid.uuid4().hex}"
    r = await client.post(CHAT, headers={**funded.headers, "X-Request-Id": rid},
                          json={"model": "m", "prompt": "logged"})
    assert r.status_code == 200, r.text
    assert r.headers["x-request-id"] == rid
    job_id = r.json()["prediction"]["job_id"]
    jobs = await json_logs.wait_for(lambda x: x["logger"] == "syncnode.job" and x.get("job_id") == job_id)
    assert len(jobs) == 1, jobs
    job = jobs[0]
    assert (job["request_id"], job["uid"], job["pool"]) == (rid, funded.uid, "chat")
    assert (job["function"], job["outcome"], job["tries"]) == ("chat.openrouter", "completed", 1)
    assert isinstance(job["duration_ms"], float) and job["duration_ms"] >= 0
    [access] = [x for x in json_logs.lines() if x["logger"] == "syncnode.access" and x.get("request_id") == rid]
    assert (access["method"], access["route"], access["status"], access["uid"]) == (
        "POST", "/chat-completion", 200, funded.uid)
    assert access["duration_ms"] > 0 and access["level"] == "INFO" and access["ts"].endswith("Z")


async def test_the_request_id_goes_into_the_job_kwargs(client: httpx.AsyncClient, funded: Account,
                                                       app: Any) -> None:
    rid = f"kw-{uuid.uuid4().hex}"
    r = await client.post(CHAT, headers={**funded.headers, "X-Request-Id": rid, "Prefer": "respond-async"},
                          json={"model": "m", "prompt": "queued with its id"})
    job = json.loads(await app.state.sn.redis.get(f"arq:job:{r.json()['job_id']}"))
    assert job["k"] == {"request_id": rid}


async def test_a_request_id_is_made_when_absent_and_on_errors(client: httpx.AsyncClient,
                                                              json_logs: Captured) -> None:
    seen = []
    for path in ("/healthz", "/no-such-route", "/balance"):  # 200, 404, 401
        r = await client.get(path)
        seen.append(r.headers["x-request-id"])
        assert GENERATED.fullmatch(seen[-1]), r.headers
    assert len(set(seen)) == 3
    statuses = {x["route"]: x["status"] for x in json_logs.lines()
                if x["logger"] == "syncnode.access" and x.get("request_id") in seen}
    assert statuses == {"/healthz": 200, "unmatched": 404, "/balance": 401}


async def _raw_get(app: Any, path: str, headers: list[tuple[bytes, bytes]]) -> tuple[int, dict[bytes, bytes]]:
    """One request straight through ASGI: header bytes no HTTP client would send."""
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "GET", "scheme": "http",
             "path": path, "raw_path": path.encode(), "query_string": b"", "root_path": "",
             "headers": [(b"host", b"gateway.test"), *headers], "client": ("127.0.0.1", 1), "server": None}
    await app(scope, receive, send)
    start = sent[0]
    return int(start["status"]), dict(start["headers"])


@pytest.mark.parametrize("hostile", [
    b"x" * 129,                      # over the bound
    b"abc\ninjected=1",              # a forged second log line
    b"abc\r\nSet-Cookie: a=b",       # a header injection
    b'a" level="ERROR',              # quotes
    b"caf\xe9",                      # not ASCII
    b"",                             # empty
])
async def test_a_hostile_request_id_is_replaced(app: Any, json_logs: Captured, hostile: bytes) -> None:
    status, headers = await _raw_get(app, "/healthz", [(b"x-request-id", hostile)])
    assert status == 200
    rid = headers[b"x-request-id"].decode()
    assert GENERATED.fullmatch(rid)
    [line] = [x for x in json_logs.lines() if x.get("request_id") == rid]
    assert line["route"] == "/healthz"
    if hostile:
        assert hostile.decode("latin-1") not in json_logs.text()


async def test_a_plain_request_id_is_kept_at_its_bound(app: Any) -> None:
    for given in (b"x" * 128, b"Root=1-5759e988-bd862e3fe1be46a994272793", b"a.b:c/d+e_f-g"):
        _, headers = await _raw_get(app, "/healthz", [(b"x-request-id", given)])
        assert headers[b"x-request-id"] == given


def test_text_lines_name_the_ids_and_json_lines_only_known_fields() -> None:
    tokens = REQUEST_ID.set("rid-1"), UID.set("u-1"), JOB_ID.set("j-1")
    try:
        record = logging.getLogRecordFactory()("syncnode.t", logging.INFO, __file__, 1, "hello %s", ("there",),
                                               None)
    finally:
        for var, tok in zip((REQUEST_ID, UID, JOB_ID), tokens, strict=True):
            var.reset(tok)
    record.outcome = "completed"
    record.api_key = "sn_must_not_appear"  # an extra that is not a known field is never written
    text = TextFormatter().format(record)
    assert text.endswith("syncnode.t INFO hello there [request_id=rid-1 uid=u-1 job_id=j-1]")
    line = json.loads(JsonFormatter().format(record))
    assert {k: line[k] for k in ("msg", "request_id", "uid", "job_id", "outcome")} == {
        "msg": "hello there", "request_id": "rid-1", "uid": "u-1", "job_id": "j-1", "outcome": "completed"}
    assert "sn_must_not_appear" not in text + json.dumps(line)


def _chat_worker_process(log_path: Path) -> subprocess.Popen[bytes]:
    env = dict(os.environ, SYNCNODE_LOG_FORMAT="json", SYNCNODE_LOG_LEVEL="DEBUG")
    with log_path.open("wb") as log:  # the child keeps its own descriptor
        return subprocess.Popen([sys.executable, "-m", "ingress.cli", "worker", "chat"], env=env,
                                stdout=subprocess.DEVNULL, stderr=log)


async def _wait_ready(log_path: Path, proc: subprocess.Popen[bytes]) -> None:
    for _ in range(600):
        if b"worker for pool chat" in log_path.read_bytes():
            return
        assert proc.poll() is None, log_path.read_text()
        await asyncio.sleep(0.05)
    raise AssertionError("the chat worker did not start")


@pytest.mark.slow
async def test_secrets_and_images_never_reach_the_logs(
        client: httpx.AsyncClient, app: Any, json_logs: Captured, media_workers: Any, sim: Any,
        moderation_worker: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A full run — sign-up, stored keys, chat on both providers, generate, moderation of an image,
    a wrong key, the web UI's sign-up and sign-in — with the ingress and in-process workers logging at
    DEBUG and the chat pool in a real process; then every line of both is searched for each secret
    and for the image."""
    log_path = tmp_path / "chat-worker.log"
    proc = _chat_worker_process(log_path)
    try:
        await _wait_ready(log_path, proc)
        r = await client.post("/accounts", headers={"Authorization": "Bearer test-admin-token"})
        assert r.status_code == 201, r.text
        acct = Account(r.json()["uid"], r.json()["api_key"])
        stored = {"openrouter_key": f"sk-or-v1-{secrets.token_hex(24)}", "chatgpt_key": f"sk-{secrets.token_hex(24)}",
                  "replicate_key": f"r8_{secrets.token_hex(16)}"}
        assert (await client.post("/api-keys", headers=acct.headers, json=stored)).status_code == 200
        rid = f"flow-{uuid.uuid4().hex}"
        h = {**acct.headers, "X-Request-Id": rid}
        r = await client.post(CHAT, headers=h, json={"model": "m", "prompt": "secret-free"})
        assert r.status_code == 200, r.text
        chat_job = r.json()["prediction"]["job_id"]
        r = await client.post("/chatgpt-completion", headers=h, json={"model": "gpt-4o-mini", "prompt": "again"})
        assert r.status_code == 200, r.text
        r = await client.post("/generate", headers=h, json={"model": "owner/model", "input": {"prompt": "x"}})
        assert r.status_code == 202, r.text
        assert (await wait_status(client, acct, r.json()["job_id"]))["replicate_status"] == "completed"
        image = b64(landscape(seed=7))
        r = await client.post("/moderate", headers=h, json={"imageBase64": image, "imageMime": "image/png"})
        assert r.status_code == 200, r.text
        wrong = f"sn_{secrets.token_urlsafe(24)}"
        assert (await client.get("/balance", headers={"Authorization": f"Bearer {wrong}"})).status_code == 401
        # The web UI's credentials: a password, a session cookie, and a wrong password.
        monkeypatch.setattr(app.state.sn.settings, "open_signup", True)
        password, email = secrets.token_urlsafe(18), f"{uuid.uuid4().hex}@example.com"
        origin = {"Origin": "http://gateway.test"}
        r = await client.post("/ui/signup", json={"email": email, "password": password}, headers=origin)
        assert r.status_code == 201, r.text
        ui_key = r.json()["api_key"]
        r = await client.post("/ui/signin", json={"email": email, "password": password}, headers=origin)
        assert r.status_code == 200, r.text
        cookie = next(iter(r.cookies.values()))
        assert (await client.get("/balance")).status_code == 200  # the session cookie as a credential
        wrong_password = secrets.token_urlsafe(18)
        r = await client.post("/ui/signin", json={"email": email, "password": wrong_password}, headers=origin)
        assert r.status_code == 401, r.text
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
    worker_log = log_path.read_text()
    worker_lines = [json.loads(line) for line in worker_log.splitlines() if line.strip()]
    # Not a vacuous search: both sides logged the flow, with the request id carried across.
    [job] = [x for x in worker_lines if x["logger"] == "syncnode.job" and x.get("job_id") == chat_job]
    assert (job["request_id"], job["uid"], job["pool"], job["outcome"]) == (rid, acct.uid, "chat", "completed")
    routes = {x["route"] for x in json_logs.lines() if x["logger"] == "syncnode.access"}
    assert {"/accounts", "/api-keys", CHAT, "/chatgpt-completion", "/generate", "/moderate", "/balance",
            "/ui/signup", "/ui/signin"} <= routes
    jobs = [x for x in json_logs.lines() if x["logger"] == "syncnode.job" and x.get("request_id") == rid]
    # The poll jobs were enqueued by the media job, not by the request: they carry its id all the same.
    assert {"media", "poll", "moderation"} <= {x["pool"] for x in jobs}
    everything = json_logs.text() + worker_log
    for name, secret in [("api key", acct.api_key), ("wrong api key", wrong), *stored.items(),
                         ("image", image[:64]), ("image tail", image[-64:]), ("password", password),
                         ("wrong password", wrong_password), ("session cookie", cookie), ("UI api key", ui_key)]:
        assert secret not in everything, f"the {name} was logged"


def test_syncnode_up_relays_json_lines_as_they_are() -> None:
    from ingress.supervisor import Guard, Supervisor

    out = io.StringIO()
    sup = Supervisor(Guard(out), json_lines=True)
    child = json.dumps({"ts": "t", "level": "INFO", "logger": "syncnode.job", "msg": "job done", "pool": "chat"})
    sup._line("chat", child)
    sup._line("web", "Traceback (most recent call last):")
    sup._line("system", "chat started (pid 42)")
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    assert lines[0] == json.loads(child)
    assert (lines[1]["process"], lines[1]["logger"], lines[1]["msg"]) == (
        "web", "syncnode.output", "Traceback (most recent call last):")
    assert (lines[2]["process"], lines[2]["logger"]) == ("system", "syncnode.up")
    text = io.StringIO()
    Supervisor(Guard(text))._line("chat", "plain")  # the default: a person reads `syncnode up`
    assert re.fullmatch(r"\d\d:\d\d:\d\d chat   \| plain\n", text.getvalue())


def test_uvicorn_s_access_line_stays_off_and_its_other_lines_come_through() -> None:
    """uvicorn logs a request line when ``uvicorn.access`` has handlers (its protocol asks
    ``hasHandlers()``): routed to ours, that line came back past ``--no-access-log``, a second
    line per request beside syncnode.access."""
    from jobs.logs import setup

    root = logging.getLogger()
    saved = (list(root.handlers), root.level)
    try:
        setup("text", "INFO", io.StringIO())
        assert not logging.getLogger("uvicorn.access").hasHandlers()
        assert logging.getLogger("uvicorn.error").hasHandlers()  # start-up and errors still show
    finally:
        root.handlers[:] = saved[0]
        root.setLevel(saved[1])
