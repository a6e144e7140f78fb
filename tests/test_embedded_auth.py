"""The embedded Postgres and Redis that ``syncnode up`` starts require passwords (any local user
can reach 127.0.0.1), kept in 0600 files; data directories created with trust are switched over.
And ``syncnode down`` signals only a live ``up``, never another ``down`` or a reused pid."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit

import asyncpg
import pytest
import redis
import redis.exceptions

from ingress.instance import Instance, stop_running
from storage.embedded import EmbeddedPostgres, EmbeddedRedis, _as, _pg_bindir, _run_as, free_port


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


async def _pg_refuses_without_password(port: int) -> None:
    with pytest.raises(asyncpg.InvalidPasswordError):
        await asyncpg.connect(f"postgresql://postgres@127.0.0.1:{port}/postgres")
    with pytest.raises(asyncpg.InvalidPasswordError):
        await asyncpg.connect(f"postgresql://postgres:wrong@127.0.0.1:{port}/postgres")


def test_the_suites_own_servers_need_their_passwords() -> None:
    # start_stack runs the same code as `syncnode up`: its URLs carry the generated passwords.
    db, rd = urlsplit(os.environ["DATABASE_URL"]), urlsplit(os.environ["REDIS_URL"])
    assert db.password and rd.password
    asyncio.run(_pg_refuses_without_password(int(db.port or 0)))
    with pytest.raises(redis.exceptions.AuthenticationError):
        redis.Redis(host="127.0.0.1", port=rd.port).ping()


def test_fresh_servers_require_a_password_kept_in_private_files(tmp_path: Path) -> None:
    pg, rd = EmbeddedPostgres(tmp_path / "postgres", fsync=False), EmbeddedRedis(tmp_path / "redis", persist=False)
    try:
        dsn, url = pg.start(), rd.start()
        assert _mode(pg.password_file) == 0o600 and _mode(rd.password_file) == 0o600
        assert urlsplit(dsn).password == pg.password_file.read_text().strip()

        async def check() -> None:
            conn = await asyncpg.connect(dsn)
            assert await conn.fetchval("SELECT 1") == 1
            await conn.close()
            await _pg_refuses_without_password(pg.port)
        asyncio.run(check())
        assert pg.running_dsn() == dsn  # what `syncnode accounts create` uses next to a running `up`

        assert redis.Redis.from_url(url).ping()
        assert EmbeddedRedis(tmp_path / "redis").running_url() == url  # what `syncnode queue` connects to
        with pytest.raises(redis.exceptions.AuthenticationError):
            redis.Redis(host="127.0.0.1", port=rd.port).ping()
        with pytest.raises(redis.exceptions.AuthenticationError):
            redis.Redis(host="127.0.0.1", port=rd.port, password="wrong").ping()
        # Not on the command line, where every local user's `ps` would show it.
        assert rd.proc is not None
        cmdline = Path(f"/proc/{rd.proc.pid}/cmdline").read_bytes().decode(errors="replace")
        password = urlsplit(url).password
        assert password and password not in cmdline
    finally:
        rd.stop()
        pg.stop()


def test_a_cluster_created_with_trust_gets_a_password_and_keeps_its_data(tmp_path: Path) -> None:
    data = tmp_path / "postgres"
    bindir, user = _pg_bindir(), _run_as()
    data.mkdir()
    if user:
        shutil.chown(data, user, user)
        shutil.chown(tmp_path, user, user)
    subprocess.run([str(bindir / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust", "--no-sync"],
                   check=True, capture_output=True, **_as(user))
    # Started the way an older `syncnode up` did: trust on 127.0.0.1, no password anywhere.
    port = free_port()
    pg_ctl = [str(bindir / "pg_ctl"), "-D", str(data), "-w"]
    subprocess.run([*pg_ctl, "-o", f"-p {port} -k {data} -c listen_addresses=127.0.0.1", "-l",
                    str(data / "server.log"), "start"], check=True, capture_output=True, **_as(user))

    async def seed() -> None:
        conn = await asyncpg.connect(f"postgresql://postgres@127.0.0.1:{port}/postgres")
        await conn.execute("CREATE TABLE kept (v int); INSERT INTO kept VALUES (42)")
        await conn.close()
    try:
        asyncio.run(seed())
    finally:
        subprocess.run([*pg_ctl, "-m", "fast", "stop"], check=True, capture_output=True, **_as(user))

    pg = EmbeddedPostgres(data, fsync=False)
    assert not pg.password_file.exists()
    try:
        dsn = pg.start()
        assert urlsplit(dsn).password and _mode(pg.password_file) == 0o600

        async def check() -> None:
            await _pg_refuses_without_password(pg.port)
            conn = await asyncpg.connect(dsn)
            assert await conn.fetchval("SELECT v FROM kept") == 42
            await conn.close()
        asyncio.run(check())
        assert " trust" not in "".join(line for line in (data / "pg_hba.conf").read_text().splitlines(True)
                                       if not line.lstrip().startswith("#"))
    finally:
        pg.stop()
    assert pg.start() == dsn  # the next start keeps the password it recorded
    pg.stop()


# ---- syncnode down -------------------------------------------------------------------------

_HOLDER = """
import fcntl, os, sys, time
f = open(sys.argv[1], "a+")
fcntl.lockf(f, fcntl.LOCK_EX)
f.seek(0); f.truncate(); f.write(f"{os.getpid()}\\n"); f.flush()
print("locked", flush=True)
time.sleep(60)
"""


def _hold(pidfile: Path, script: Path, *args: str) -> subprocess.Popen[str]:
    script.write_text(_HOLDER)
    proc = subprocess.Popen([sys.executable, str(script), str(pidfile), *args], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "locked"
    return proc


def _end(proc: subprocess.Popen[str]) -> None:
    """Kill if still running, reap, and close our end of its stdout pipe."""
    with proc:  # Popen's exit closes the pipes and waits
        if proc.poll() is None:
            proc.kill()


def test_down_waits_for_a_lock_holder_that_is_not_an_up_and_never_signals_it(tmp_path: Path) -> None:
    inst = Instance(tmp_path)
    holder = _hold(inst.path, tmp_path / "holder.py")  # e.g. another `down` from an older version
    try:
        assert inst.running_pid() == holder.pid
        t0 = time.monotonic()
        assert stop_running(inst, timeout=0.5) is None
        assert time.monotonic() - t0 >= 0.4 and holder.poll() is None
    finally:
        _end(holder)


def test_down_signals_a_live_up(tmp_path: Path) -> None:
    inst = Instance(tmp_path)
    up = _hold(inst.path, tmp_path / "syncnode", "up")  # argv: python …/syncnode up
    try:
        assert stop_running(inst, timeout=10) == up.pid
        assert up.wait(5) == -signal.SIGTERM
    finally:
        _end(up)


_DOWN = """
import sys, time
from pathlib import Path
from ingress.instance import Instance
inst = Instance(Path(sys.argv[1]))
inst.acquire(record=False)  # what `down` holds while it cleans up
print("locked", flush=True)
time.sleep(60)
"""


def test_down_cleaning_up_records_no_pid_for_a_second_down_to_signal(tmp_path: Path) -> None:
    first = subprocess.Popen([sys.executable, "-c", _DOWN, str(tmp_path)], stdout=subprocess.PIPE, text=True,
                             env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])})
    try:
        assert first.stdout is not None and first.stdout.readline().strip() == "locked"
        second = Instance(tmp_path)
        assert second.path.read_text() == "" and second.running_pid() == -1
        assert stop_running(second, timeout=0.3) is None  # waited, signalled nobody
        assert first.poll() is None
    finally:
        _end(first)
    assert Instance(tmp_path).running_pid() is None
