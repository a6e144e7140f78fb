"""``syncnode``: run the gateway (``up``, ``worker``), migrate, create accounts."""

from __future__ import annotations

import argparse
import asyncio
import importlib
import json
import math
import os
import sys
from collections.abc import Callable, Coroutine, Iterator
from contextlib import contextmanager
from typing import Any

from ingress.instance import down_command
from ingress.supervisor import STOP_MARGIN_SECONDS, Guard, Shutdown, Supervisor, port_open
from jobs import keys, logs
from jobs.settings import Settings, get_settings
from storage.embedded import EmbeddedPostgres, EmbeddedRedis, EmbeddedServerError


@contextmanager
def _database(s: Settings) -> Iterator[str]:
    """DATABASE_URL, or the embedded Postgres (the one `up` runs, else started for this command)."""
    if s.database_url:
        yield s.database_url
        return
    pg = EmbeddedPostgres(s.data_dir / "postgres")
    running = pg.running_dsn()
    if running:
        yield running
        return
    try:
        yield pg.start()
    finally:
        pg.stop()


def _run(coro_fn: Callable[[str], Coroutine[Any, Any, Any]]) -> Any:
    with _database(get_settings()) as dsn:
        return asyncio.run(coro_fn(dsn))


def cmd_migrate(args: argparse.Namespace) -> int:
    from storage.migrate import migrate

    applied = _run(migrate)
    print(json.dumps({"applied": applied}))
    return 0


def cmd_accounts_create(args: argparse.Namespace) -> int:
    from ingress.accounts import create_account, valid_email
    from jobs.errors import BadRequest, Conflict
    from storage.migrate import migrate

    try:  # before any database is started: the same rule and message as POST /accounts
        email = None if args.email is None else valid_email(args.email)
    except BadRequest as e:
        print(e.message, file=sys.stderr)
        return 2

    async def go(dsn: str) -> dict[str, Any] | str:
        import asyncpg

        await migrate(dsn)
        conn = await asyncpg.connect(dsn)
        try:
            async with conn.transaction():
                return await create_account(conn, email, get_settings().starting_balance)
        except Conflict as e:
            return e.message
        finally:
            await conn.close()

    return _print_result(_run(go))


def cmd_accounts_set_password(args: argparse.Namespace) -> int:
    """Give an account a web sign-in (email + password) or change it; the password comes from
    stdin (--password-stdin) or an interactive prompt, never from the command line."""
    from ingress.accounts import valid_email
    from ingress.web.passwords import check_strength, hash_password
    from jobs.errors import BadRequest
    from storage.accounts import AccountRepository
    from storage.migrate import migrate
    from storage.web import LoginRepository

    try:  # a login email nobody could sign in with is refused here, not at sign-in
        login_email = None if args.email is None else valid_email(args.email)
    except BadRequest as e:
        print(e.message, file=sys.stderr)
        return 2
    password = _read_password(args.password_stdin)
    try:
        check_strength(password)
    except BadRequest as e:
        print(e.message, file=sys.stderr)
        return 2
    digest = hash_password(password)

    async def go(dsn: str) -> dict[str, Any] | str:
        import asyncpg

        await migrate(dsn)
        conn = await asyncpg.connect(dsn)
        try:
            logins, accounts = LoginRepository(conn), AccountRepository(conn)
            uid = args.uid or await logins.uid_for_email(_as_email(args.email_only or ""))
            if uid is None or not await accounts.exists(uid):
                return "No such account: pass the uid `syncnode accounts create` printed"
            found = args.email_only or await logins.account_email(uid)
            if login_email is None and not found:
                return "This account has no email: pass --email"
            try:  # an older account's email, kept as given: the sign-in will apply the rule to it
                email = login_email or valid_email(found or "")
            except BadRequest:
                return f"This account's email {found!r} breaks the email rule: pass --login-email"
            try:
                async with conn.transaction():
                    # One email, one account: as create_account, also against accounts' own emails.
                    if not await accounts.claim_email(email, uid):
                        return "This email belongs to another account"
                    await logins.set_password(uid, email, digest)
            except asyncpg.UniqueViolationError:
                return "This email already signs in to another account"
            return {"uid": uid, "email": email, "password": "set"}
        finally:
            await conn.close()

    return _print_result(_run(go))


def _as_email(raw: str) -> str:
    """An email to look an account up by, spelled as the rule keeps it when it passes."""
    from ingress.accounts import valid_email
    from jobs.errors import BadRequest

    try:
        return valid_email(raw)
    except BadRequest:
        return raw


def _print_result(result: dict[str, Any] | str) -> int:
    """The JSON answer on stdout; or the refusal, one line on stderr, and exit status 1."""
    if isinstance(result, str):
        print(result, file=sys.stderr)
        return 1
    print(json.dumps(result))
    return 0


def _read_password(from_stdin: bool) -> str:
    if from_stdin:
        return sys.stdin.readline().rstrip("\n")
    import getpass

    first = getpass.getpass("New password: ")
    if getpass.getpass("Again: ") != first:
        print("Passwords differ", file=sys.stderr)
        sys.exit(2)
    return first


# The one way from the ``syncnode`` command into the workers package: by name, not by import,
# since the ingress sits beside the workers, not above them (tests/test_layers.py).
WORKER_ENTRY = "workers.cli:run_pool"


def cmd_worker(args: argparse.Namespace) -> int:
    s = get_settings()
    if args.check:
        return _check_worker(args.pool, s)
    module, _, name = WORKER_ENTRY.partition(":")
    run_pool: Callable[..., int] = getattr(importlib.import_module(module), name)
    return run_pool(args.pool, burst=args.burst)


def _check_worker(pool: str, s: Settings) -> int:
    """Exit 0 when a worker of ``pool`` wrote its health key lately (arq's ``--check``, our key names)."""
    from redis.asyncio import Redis
    from redis.exceptions import RedisError

    from ingress.queue_cli import redis_url

    # As `syncnode queue` finds it: a fixed localhost:6379 was another Redis than `make run`'s.
    url = redis_url(s)
    if url is None:
        print(f"{pool}: no Redis to read: set REDIS_URL, or start SyncNode (make run) first", file=sys.stderr)
        return 1

    async def go() -> bytes | None:
        redis = Redis.from_url(url, socket_timeout=5)
        try:
            value: bytes | None = await redis.get(keys.health_check(pool))
            return value
        finally:
            await redis.aclose()

    try:
        seen = asyncio.run(go())
    except (OSError, RedisError) as e:
        print(f"{pool}: Redis unreachable: {e}", file=sys.stderr)
        return 1
    if seen is None:
        print(f"{pool}: no worker has reported in the last health-check interval", file=sys.stderr)
        return 1
    print(f"{pool}: {seen.decode(errors='replace')}")
    return 0


def cmd_up(args: argparse.Namespace) -> int:
    from ingress.instance import AlreadyRunning, Instance, clean_stale, shown

    s = get_settings()
    logs.setup(s.log_format, s.log_level)
    guard = Guard(sys.stdout)
    guard.install()  # before anything starts: a Ctrl-C during start-up must stop what did start
    inst = Instance(s.data_dir)
    try:
        inst.acquire()
    except AlreadyRunning as e:
        print(e, file=sys.stderr)
        return 1
    except Shutdown:
        return 0
    port = args.port or s.port
    if port_open(port):
        # Else the banner (printed once the port answers) named another program's server, and
        # the ingress's failed bind was one line among the workers' start-up.
        inst.release()
        print(f"syncnode up: port {port} is already in use by another program: stop it, or choose another "
              "port with --port N (or SYNCNODE_PORT)", file=sys.stderr)
        return 1
    stack: list[EmbeddedPostgres | EmbeddedRedis] = []
    try:
        stopped = clean_stale(s.data_dir)
        if stopped:
            guard.say(f"Stopped the {' and '.join(stopped)} a previous `syncnode up` left running "
                      f"in {shown(s.data_dir)}\n")
        return _up(args, s, stack, Supervisor(guard, json_lines=s.log_format == "json",
                                              grace=s.shutdown_grace_seconds + STOP_MARGIN_SECONDS))
    except Shutdown:
        return 0
    except EmbeddedServerError as e:
        print(f"syncnode up: {e}", file=sys.stderr)
        return 1
    finally:
        guard.stopping = True
        for svc in reversed(stack):
            svc.stop()
        inst.release()
        guard.say("SyncNode stopped.\n")


def _up(args: argparse.Namespace, s: Settings, stack: list[EmbeddedPostgres | EmbeddedRedis], sup: Supervisor) -> int:
    from storage.migrate import migrate

    port = args.port or s.port
    env = dict(os.environ, SYNCNODE_PORT=str(port), SYNCNODE_MASTER_KEY=s.master_key_value(),
               PYTHONUNBUFFERED="1")
    if not s.database_url:
        pg = EmbeddedPostgres(s.data_dir / "postgres", die_with_parent=True)
        stack.append(pg)  # before start: a signal during start-up still stops it
        env["DATABASE_URL"] = pg.start()
    if not s.redis_url:
        rd = EmbeddedRedis(s.data_dir / "redis", die_with_parent=True)
        stack.append(rd)
        env["REDIS_URL"] = rd.start()
    asyncio.run(migrate(env["DATABASE_URL"]))
    py = sys.executable
    sup.add("web", [py, "-m", "uvicorn", "ingress.app:create_app", "--factory", "--host", "127.0.0.1",
                    "--port", str(port), "--no-access-log",
                    "--timeout-graceful-shutdown", str(math.ceil(s.shutdown_grace_seconds))], env)
    for pool in keys.POOLS:
        sup.add(pool, [py, "-m", "ingress.cli", "worker", pool], env)
    url = s.public_url_ or f"http://localhost:{port}"
    me = down_command().removesuffix(" down")
    return sup.run(port, up_banner(url, me, s.open_signup))


def up_banner(url: str, me: str, open_signup: bool) -> str:
    signup = "open sign-up is on" if open_signup else "sign-up needs SYNCNODE_OPEN_SIGNUP=true"
    return (f"\n  SyncNode on {url}\n"
            f"  web UI:             {url}/   ({signup})\n"
            f"  create an account:  {me} accounts create   (or POST {url}/accounts with SYNCNODE_ADMIN_TOKEN)\n"
            f"  Ctrl-C stops everything (or `{me} down` from another terminal).\n\n")


def cmd_down(args: argparse.Namespace) -> int:
    """Stop the ``syncnode up`` of this data directory, and whatever a dead one left running."""
    from ingress.instance import AlreadyRunning, Instance, clean_stale, shown, stop_running

    s = get_settings()
    if not s.data_dir.is_dir():
        print(f"SyncNode is not running from {shown(s.data_dir)}")
        return 0
    inst = Instance(s.data_dir)
    pid = stop_running(inst)
    try:
        inst.acquire(record=False)  # held while cleaning, so an `up` starting meanwhile keeps its servers
    except AlreadyRunning as e:
        print(e, file=sys.stderr)
        return 1
    try:
        left = clean_stale(s.data_dir)
    finally:
        inst.release()
    if pid is None and not left:
        print(f"SyncNode is not running from {shown(s.data_dir)}")
    elif pid is None:
        print(f"Stopped the {' and '.join(left)} a previous `syncnode up` left running in {shown(s.data_dir)}")
    else:
        print(f"Stopped SyncNode (pid {pid}) running from {shown(s.data_dir)}")
    return 0


def cmd_queue(args: argparse.Namespace) -> int:
    from ingress import queue_cli

    s = get_settings()
    if args.queue_cmd != "show":
        return queue_cli.main_async(args, s, None)
    with _database(s) as dsn:  # the task row is in Postgres
        return queue_cli.main_async(args, s, dsn)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="syncnode", description="SyncNode AI API gateway")
    sub = p.add_subparsers(dest="cmd", required=True)
    up = sub.add_parser("up", help="run everything: embedded Postgres/Redis if no URLs, ingress, all pools")
    up.add_argument("--port", type=int)
    up.set_defaults(fn=cmd_up)
    sub.add_parser("down", help="stop the `syncnode up` running from this data directory").set_defaults(fn=cmd_down)
    sub.add_parser("migrate", help="apply database migrations (idempotent)").set_defaults(fn=cmd_migrate)
    acc = sub.add_parser("accounts", help="manage accounts")
    acc_sub = acc.add_subparsers(dest="acc_cmd", required=True)
    create = acc_sub.add_parser("create", help="create an account; prints uid, api_key, balance")
    create.add_argument("--email")
    create.set_defaults(fn=cmd_accounts_create)
    setpw = acc_sub.add_parser("set-password", help="set an account's web sign-in email and password")
    who = setpw.add_mutually_exclusive_group(required=True)
    who.add_argument("--uid")
    who.add_argument("--email", dest="email_only")
    setpw.add_argument("--login-email", dest="email", help="the email to sign in with (default: the account's)")
    setpw.add_argument("--password-stdin", action="store_true", help="read the password from stdin")
    setpw.set_defaults(fn=cmd_accounts_set_password)
    w = sub.add_parser("worker", help="run one worker of a pool")
    w.add_argument("pool", choices=keys.POOLS)
    w.add_argument("--burst", action="store_true", help="exit when the queue is empty")
    w.add_argument("--check", action="store_true",
                   help="health check: exit 0 if a worker of the pool reported lately, else 1")
    w.set_defaults(fn=cmd_worker)
    from ingress.queue_cli import add_parser as add_queue_parser

    add_queue_parser(sub).set_defaults(fn=cmd_queue)
    args = p.parse_args(argv)
    return int(args.fn(args))


if __name__ == "__main__":
    sys.exit(main())
