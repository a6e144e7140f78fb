"""Child-process lifetime: children that die with their parent, and pid files that may lie.

``syncnode up`` starts Postgres, Redis, the ingress and the workers. Two mechanisms keep none of
them running after ``up`` is gone:

- each child runs in its own process group (``start_new_session``), so one ``killpg`` reaches
  the child and anything it forked, and a terminal's Ctrl-C / hang-up reaches only ``up``,
  which then stops the children in order (workers and ingress first, the databases last);
- on Linux each child also asks the kernel for a signal when its parent dies
  (``prctl(PR_SET_PDEATHSIG)``), which is the only thing that still works when ``up`` is
  SIGKILLed or crashes. Elsewhere the next start finds the stale pid files and stops what is left.

A pid read from a file may be dead, a zombie, or reused by an unrelated process after a reboot
or in a container; ``runs`` checks the program name before anything is signalled.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path

_PR_SET_PDEATHSIG = 1


def die_with_parent(sig: int = signal.SIGTERM) -> Callable[[], None] | None:
    """A ``preexec_fn`` that makes the child receive ``sig`` when the calling thread's process dies.

    The kernel ties the signal to the thread that forked, so call Popen from a thread that lives
    as long as the child should (``up`` uses the main thread). None where prctl does not exist.
    """
    if not sys.platform.startswith("linux"):
        return None
    libc = ctypes.CDLL(None, use_errno=True)  # loaded here: the child must do as little as possible
    parent = os.getpid()

    def preexec() -> None:
        libc.prctl(_PR_SET_PDEATHSIG, sig, 0, 0, 0)
        if os.getppid() != parent:  # the parent died before prctl took effect
            os.kill(os.getpid(), sig)

    return preexec


def alive(pid: int) -> bool:
    """True while ``pid`` exists and is not a zombie."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True  # no /proc (macOS): kill(0) is all we know
    return stat.rpartition(")")[2].split()[:1] != ["Z"]


def runs(pid: int, *programs: str) -> bool:
    """True if ``pid`` is alive and its executable or command line names one of ``programs``."""
    if not alive(pid):
        return False
    try:
        comm = Path(f"/proc/{pid}/comm").read_text().strip()
        argv0 = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0].decode(errors="replace")
    except OSError:
        return True
    return any(p == comm or os.path.basename(argv0).startswith(p) for p in programs)


def read_pid(path: Path) -> int | None:
    try:
        return int(path.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def wait_gone(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while alive(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def stop_pid(pid: int, timeout: float = 15.0, sig: int = signal.SIGTERM) -> None:
    """Signal a process that is not our child and wait for it; SIGKILL if it outlives ``timeout``."""
    try:
        os.kill(pid, sig)
        if not wait_gone(pid, timeout):
            os.kill(pid, signal.SIGKILL)
            wait_gone(pid, 5.0)
    except ProcessLookupError:
        pass
