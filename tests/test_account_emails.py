"""An account's email passes one rule (ingress/accounts.py valid_email) whichever way the account
is made: POST /accounts (admin token or open sign-up), the web sign-up, `syncnode accounts create`;
/openapi.json states that rule; and an email belongs to one account, whichever way it came (409)."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from jsonschema import Draft202012Validator

ADMIN = {"Authorization": "Bearer test-admin-token"}
ORIGIN = {"Origin": "http://gateway.test"}
PASSWORD = "a long enough password"

# 64 + 1 + 189 = 254 characters: RFC 5321's longest address; one more is refused.
LONGEST = "a" * 64 + "@" + "b" * 185 + ".com"
HOSTILE = [
    "",
    "no-at-sign.example.com",
    "two@@example.com",
    "one@two@example.com",
    "@example.com",
    "name@",
    "name@localhost",
    "has space@example.com",
    "name@exa mple.com",
    "tab\t@example.com",
    "bell\x07@example.com",
    "esc\x1b[31m@example.com",
    "del\x7f@example.com",
    "c1\x9b@example.com",
    "nbsp\xa0@example.com",
    "zero\u200bwidth@example.com",
    "flip\u202e@example.com",
    # Unicode's other default-ignorable code points: invisible, so two addresses look alike.
    "soft\xadhyphen@example.com",
    "arabic\u061cmark@example.com",
    "mongolian\u180eseparator@example.com",
    "variation\ufe0fselector@example.com",
    "hangul\u3164filler@example.com",
    "joiner\u034f@example.com",
    "tag\U000e0041@example.com",
    "name@example.com\r\nBcc:victim@example.org",
    "name@example.com\nX-Injected:yes",
    "name\r\n@example.com",
    "x" * 65 + "@example.com",
    "a" * 64 + "@" + "b" * 186 + ".com",  # 255 characters
]


def _id(email: str) -> str:
    return ascii(email)[:40]


@pytest.fixture
async def open_signup(app: Any, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[None]:
    monkeypatch.setattr(app.state.sn.settings, "open_signup", True)
    monkeypatch.setattr(app.state.sn.settings, "signup_max_per_address", 1000)
    yield
    redis = app.state.sn.redis
    keys = [k async for k in redis.scan_iter("syncnode:signin-fail:signup:*")]
    if keys:
        await redis.delete(*keys)


@pytest.fixture
async def spec(client: httpx.AsyncClient) -> dict[str, Any]:
    doc: dict[str, Any] = (await client.get("/openapi.json")).json()
    return doc


def _body_schema(spec: dict[str, Any], path: str) -> Draft202012Validator:
    schema = spec["paths"][path]["post"]["requestBody"]["content"]["application/json"]["schema"]
    return Draft202012Validator({**schema, "components": spec["components"]})


def _fresh() -> str:
    return f"em-{uuid.uuid4().hex[:10]}@example.com"


async def _accounts(app: Any) -> int:
    return int(await app.state.sn.db.fetchval("SELECT count(*) FROM accounts"))


async def _stored(app: Any, uid: str) -> str | None:
    v = await app.state.sn.db.fetchval("SELECT email FROM accounts WHERE uid = $1", uid)
    return None if v is None else str(v)


@pytest.mark.parametrize("email", HOSTILE, ids=_id)
async def test_a_malformed_email_is_refused_the_same_way_everywhere(
        email: str, client: httpx.AsyncClient, app: Any, spec: dict[str, Any], open_signup: None) -> None:
    before = await _accounts(app)
    assert not _body_schema(spec, "/accounts").is_valid({"email": email})
    assert not _body_schema(spec, "/ui/signup").is_valid({"email": email, "password": PASSWORD})
    admin = await client.post("/accounts", headers=ADMIN, json={"email": email})
    assert admin.status_code == 400, admin.text
    assert set(admin.json()) == {"error"} and admin.json()["error"].startswith("Invalid email")
    anyone = await client.post("/accounts", json={"email": email})
    assert anyone.status_code == 400 and anyone.json() == admin.json()
    web = await client.post("/ui/signup", json={"email": email, "password": PASSWORD}, headers=ORIGIN)
    assert web.status_code == 400 and "email" in web.json()["error"]
    assert await _accounts(app) == before


async def test_a_valid_email_is_accepted_and_kept_lower_cased(client: httpx.AsyncClient, app: Any,
                                                             spec: dict[str, Any]) -> None:
    tag = uuid.uuid4().hex[:8]
    for email, kept in ((f" First.Last+{tag}@Example.COM\n", f"first.last+{tag}@example.com"),
                        (f"{tag}@bücher.example", f"{tag}@bücher.example"),
                        (tag + LONGEST[len(tag):], tag + LONGEST[len(tag):])):
        assert _body_schema(spec, "/accounts").is_valid({"email": email}), email
        r = await client.post("/accounts", headers=ADMIN, json={"email": email})
        assert r.status_code == 201, r.text
        assert await _stored(app, r.json()["uid"]) == kept


async def test_one_address_spelled_two_unicode_ways_is_one_email(client: httpx.AsyncClient, app: Any) -> None:
    """"ü" precomposed and "u" + combining diaeresis are the same text (canonically equivalent):
    the email is kept in one form (NFC), so the second spelling finds the first account."""
    tag = uuid.uuid4().hex[:8]
    composed, decomposed = f"\u00fcber-{tag}@example.com", f"u\u0308ber-{tag}@example.com"
    r = await client.post("/accounts", headers=ADMIN, json={"email": decomposed})
    assert r.status_code == 201, r.text
    assert await _stored(app, r.json()["uid"]) == composed
    r = await client.post("/accounts", headers=ADMIN, json={"email": composed.upper()})
    assert r.status_code == 409, r.text


async def test_the_email_stays_optional(client: httpx.AsyncClient, app: Any, spec: dict[str, Any]) -> None:
    for body in ({}, {"email": None}):
        assert _body_schema(spec, "/accounts").is_valid(body)
        r = await client.post("/accounts", headers=ADMIN, json=body)
        assert r.status_code == 201 and await _stored(app, r.json()["uid"]) is None
    assert (await client.post("/accounts", headers=ADMIN)).status_code == 201


async def test_an_email_belongs_to_one_account_whichever_way_it_came(
        client: httpx.AsyncClient, app: Any, spec: dict[str, Any], open_signup: None) -> None:
    assert "409" in spec["paths"]["/accounts"]["post"]["responses"]
    admin_made, web_made = _fresh(), _fresh()
    assert (await client.post("/accounts", headers=ADMIN, json={"email": admin_made})).status_code == 201
    r = await client.post("/ui/signup", json={"email": web_made, "password": PASSWORD}, headers=ORIGIN)
    assert r.status_code == 201
    before = await _accounts(app)
    for email in (admin_made, admin_made.upper(), f" {web_made.upper()}"):
        r = await client.post("/accounts", headers=ADMIN, json={"email": email})
        assert r.status_code == 409 and r.json() == {"error": "An account with this email already exists"}
        assert (await client.post("/accounts", json={"email": email})).status_code == 409
    # The web sign-up refuses the email an operator gave an account, too (it has no password yet).
    r = await client.post("/ui/signup", json={"email": admin_made.upper(), "password": PASSWORD}, headers=ORIGIN)
    assert r.status_code == 409 and "already exists" in r.json()["error"]
    assert await _accounts(app) == before


async def test_two_creations_with_one_email_at_once_make_one_account(client: httpx.AsyncClient, app: Any) -> None:
    """The check and the insert are not one statement: the email is locked until the first
    creation commits, so the second one sees its row and is refused."""
    from decimal import Decimal

    from ingress.accounts import create_account, valid_email

    email = _fresh()
    async with app.state.sn.db.acquire() as conn, conn.transaction():
        await create_account(conn, valid_email(email), Decimal("1"))
        second = asyncio.create_task(client.post("/accounts", headers=ADMIN, json={"email": email}))
        await asyncio.sleep(0.3)
        assert not second.done()  # waiting for the first creation to commit or roll back
    r = await second
    assert r.status_code == 409, r.text
    n = await app.state.sn.db.fetchval("SELECT count(*) FROM accounts WHERE email = $1", email)
    assert n == 1


def _cli(*args: str | bytes) -> subprocess.CompletedProcess[str]:
    # A subprocess, like an operator's shell: the CLI runs its own event loop.
    return subprocess.run([sys.executable, "-m", "ingress.cli", "accounts", *args], input=PASSWORD + "\n",
                          capture_output=True, text=True, env=dict(os.environ), timeout=60)


def test_the_cli_follows_the_same_rule(stack: dict[str, Any]) -> None:
    email = _fresh()
    r = _cli("create", "--email", f"  {email.upper()}")
    assert r.returncode == 0, r.stderr
    assert set(json.loads(r.stdout)) == {"uid", "api_key", "balance"}
    for bad in ("no-at-sign.example.com", "name@example.com\r\nBcc:victim@example.org", "esc\x1b@example.com",
                "zero\u200bwidth@example.com", HOSTILE[-1], "", b"not-utf-8-\xff@example.com"):
        r = _cli("create", "--email", bad)
        assert r.returncode == 2 and r.stdout == "", (bad, r)
        assert r.stderr.startswith("Invalid email") and r.stderr.count("\n") == 1, (bad, r.stderr)
    r = _cli("create", "--email", email)
    assert r.returncode == 1 and r.stderr == "An account with this email already exists\n"
    r = _cli("create")  # no email: still an account
    assert r.returncode == 0, r.stderr
    uid = json.loads(r.stdout)["uid"]
    # A sign-in email set by the operator passes the same rule.
    r = _cli("set-password", "--uid", uid, "--login-email", "bad\n@example.com", "--password-stdin")
    assert r.returncode == 2 and r.stderr.startswith("Invalid email")


async def test_set_password_cannot_give_one_account_anothers_email(client: httpx.AsyncClient, app: Any) -> None:
    """The operator's `set-password --login-email` is one more way an email reaches an account:
    an email another account was made with is refused there too, not only at sign-up."""
    taken, mine = _fresh(), _fresh()
    owner = (await client.post("/accounts", headers=ADMIN, json={"email": taken})).json()["uid"]
    other = (await client.post("/accounts", headers=ADMIN, json={"email": mine})).json()["uid"]

    def set_pw(uid: str, email: str) -> subprocess.CompletedProcess[str]:
        return _cli("set-password", "--uid", uid, "--login-email", email, "--password-stdin")

    r = await asyncio.to_thread(set_pw, other, taken.upper())
    assert r.returncode == 1 and "another account" in r.stderr, (r.stdout, r.stderr)
    assert await app.state.sn.db.fetchval("SELECT count(*) FROM web_logins WHERE email = $1", taken) == 0
    # Its own email, and the owner's own: both fine.
    assert (await asyncio.to_thread(set_pw, other, mine)).returncode == 0
    assert (await asyncio.to_thread(set_pw, owner, taken)).returncode == 0


async def test_set_password_signs_in_with_an_older_accounts_email_as_the_rule_spells_it(
        client: httpx.AsyncClient, app: Any) -> None:
    """Accounts made before the rule kept their email as given (blanks, capitals). The login
    set from it must be one the sign-in (which applies the rule) can find, or be refused."""
    email = _fresh()
    uid = str(uuid.uuid4())
    await app.state.sn.db.execute("INSERT INTO accounts (uid, email) VALUES ($1, $2)", uid, f" {email.upper()} ")
    r = await asyncio.to_thread(_cli, "set-password", "--uid", uid, "--password-stdin")
    assert r.returncode == 0, r.stderr
    assert await app.state.sn.db.fetchval("SELECT email FROM web_logins WHERE uid = $1", uid) == email
    bad = str(uuid.uuid4())
    await app.state.sn.db.execute("INSERT INTO accounts (uid, email) VALUES ($1, 'nobody@localhost')", bad)
    r = await asyncio.to_thread(_cli, "set-password", "--uid", bad, "--password-stdin")
    assert r.returncode == 1 and "--login-email" in r.stderr, r.stderr


async def test_the_email_index_migrates_a_database_with_older_accounts_emails(stack: dict[str, Any]) -> None:
    """Before the rule an account's email was any text (the CLI set no length): duplicates,
    capitals, blanks, controls, and one longer than a B-tree entry may be (2704 bytes). 0009
    must still apply, or the gateway would not start; and the lookup must still find them."""
    from importlib import resources

    import asyncpg

    from storage.accounts import AccountRepository
    from storage.migrate import migrate

    name = f"emails_{uuid.uuid4().hex[:12]}"
    admin = await asyncpg.connect(stack["pg"].dsn)
    await admin.execute(f"CREATE DATABASE {name}")
    try:
        conn = await asyncpg.connect(stack["pg"].dsn, database=name)
        try:
            await conn.execute("CREATE TABLE schema_migrations (version text PRIMARY KEY, "
                               "applied_at timestamptz NOT NULL DEFAULT now())")
            for f in sorted(resources.files("storage.migrations").iterdir(), key=lambda f: f.name):
                if f.name.endswith(".sql") and f.name < "0009":
                    await conn.execute(f.read_text())
                    await conn.execute("INSERT INTO schema_migrations (version) VALUES ($1)", f.name)
            huge = "".join(chr(0x4E00 + i % 20_000) for i in range(1500)) + "@example.com"
            for i, email in enumerate(["a@example.com", "A@EXAMPLE.COM", " a@example.com ", None, "",
                                       "esc\x1b@x", huge]):
                await conn.execute("INSERT INTO accounts (uid, email) VALUES ($1, $2)", f"old-{i}", email)
            assert "0009_account_email_index.sql" in await migrate(stack["pg"].dsn.rsplit("/", 1)[0] + "/" + name)
            async with conn.transaction():
                assert not await AccountRepository(conn).claim_email("a@example.com")
                assert not await AccountRepository(conn).claim_email(huge)
                assert await AccountRepository(conn).claim_email(_fresh())
        finally:
            await conn.close()
    finally:
        await admin.execute(f"DROP DATABASE {name} WITH (FORCE)")
        await admin.close()
