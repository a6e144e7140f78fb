"""One ``syncnode up`` per data directory: ``<data_dir>/syncnode.pid``, locked while it runs.

The lock is a POSIX record lock (``lockf``): the kernel drops it when the process dies however
it dies, and children never inherit it, so "locked" means exactly "that ``up`` is alive".
A pid file that is not locked is stale: its ``up`` was SIGKILLed or crashed, and the embedded
servers it started may still run (where the parent-death signal does not exist) or have left
their own pid files behind; ``clean_stale`` stops them before a new start.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import signal
import sys
import time
from pathlib import Path
from typing import IO

from storage import procs
from storage.embedded import EmbeddedPostgres, EmbeddedRedis

PID_FILE = "syncnode.pid"


class AlreadyRunning(Exception):
    def __init__(self, data_dir: Path, pid: int | None) -> None:
        self.pid = pid
        super().__init__(f"SyncNode is already running from {shown(data_dir)} (pid {pid or '?'}): "
                         f"stop it with `{down_command()}` or Ctrl-C in its terminal")


def shown(data_dir: Path) -> str:
    text = str(data_dir)
    return text if data_dir.is_absolute() or text.startswith(("./", "../")) else f"./{text}"


def down_command() -> str:
    """How the user who ran this would type ``syncnode down`` (``make run`` users have .venv/bin/)."""
    argv0 = sys.argv[0] if sys.argv else ""
    if os.path.basename(argv0) != "syncnode":
        return "syncnode down"
    on_path = shutil.which("syncnode")
    if on_path and os.path.realpath(on_path) == os.path.realpath(argv0):
        return "syncnode down"
    rel = os.path.relpath(argv0)
    return f"{rel if not rel.startswith('..') else argv0} down"


def _try_lock(path: Path) -> IO[str] | None:
    """The open, locked pid file, or None if a live process holds it."""
    while True:
        f = open(path, "a+")
        try:
            fcntl.lockf(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            f.close()
            return None
        # Locked a file that a stopping instance unlinked meanwhile? Then lock the new one.
        try:
            if os.stat(path).st_ino == os.fstat(f.fileno()).st_ino:
                return f
        except FileNotFoundError:
            pass
        f.close()


class Instance:
    """The pid file of ``syncnode up`` on one data directory."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.path = data_dir / PID_FILE
        self._file: IO[str] | None = None

    def recorded_pid(self) -> int | None:
        return procs.read_pid(self.path)

    def acquire(self, *, record: bool = True) -> bool:
        """Take the lock and record our pid; raise AlreadyRunning. True if a stale one was found.

        ``down`` takes the lock only to clean up and records nothing (``record=False``): the pid
        file names a running ``up`` or nobody, so a second ``down`` never signals the first."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        f = _try_lock(self.path)
        if f is None:
            raise AlreadyRunning(self.data_dir, self.recorded_pid())
        f.seek(0)
        stale = bool(f.read().strip())
        f.seek(0)
        f.truncate()
        if record:
            f.write(f"{os.getpid()}\n")
        f.flush()
        self._file = f
        return stale

    def release(self) -> None:
        if self._file is not None:
            # Unlink while still holding the lock, so no one locks a file about to vanish.
            self.path.unlink(missing_ok=True)
            self._file.close()
            self._file = None

    def running_pid(self) -> int | None:
        """The pid of the ``up`` holding the lock, or None when none runs."""
        if not self.path.exists():
            return None
        f = _try_lock(self.path)
        if f is None:
            return self.recorded_pid() or -1
        f.close()
        return None


def clean_stale(data_dir: Path) -> list[str]:
    """Stop the embedded servers a dead ``up`` left on ``data_dir``; what was stopped."""
    stopped = []
    if EmbeddedRedis(data_dir / "redis").stop_stale():
        stopped.append("Redis")
    if EmbeddedPostgres(data_dir / "postgres").stop_stale():
        stopped.append("Postgres")
    return stopped


def is_up(pid: int) -> bool:
    """True if ``pid`` is a live ``syncnode up`` (``syncnode up`` or ``python -m ingress.cli up``):
    a pid file may name a reused pid, and only an ``up`` is ever signalled."""
    if not procs.alive(pid):
        return False
    try:
        argv = [a.decode(errors="replace") for a in Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")]
    except OSError:
        return procs.runs(pid, "syncnode", "python", "Python")  # no /proc: the program name is all we have
    cli = any(os.path.basename(a) == "syncnode" or a == "ingress.cli" for a in argv)
    return cli and "up" in argv


def stop_running(inst: Instance, timeout: float = 60.0) -> int | None:
    """SIGTERM the ``up`` holding the lock and wait until it let go (SIGKILL past ``timeout``).

    A lock held by something that is not an ``up`` (a ``down`` cleaning up, or a pid file naming
    another process) is waited for, never signalled."""
    pid = inst.running_pid()
    if pid is None:
        return None
    deadline = time.monotonic() + timeout
    if pid <= 0 or not is_up(pid):
        while inst.running_pid() is not None and time.monotonic() < deadline:
            time.sleep(0.1)
        return None
    os.kill(pid, signal.SIGTERM)
    while inst.running_pid() is not None and time.monotonic() < deadline:
        time.sleep(0.1)
    if inst.running_pid() is not None and is_up(pid):
        os.kill(pid, signal.SIGKILL)
        procs.wait_gone(pid, 5.0)
    return pid
