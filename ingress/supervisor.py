"""The process supervisor behind ``syncnode up``: start children, relay their output, stop them all.

Why not honcho's Manager (which ``up`` used before): it handles SIGINT and SIGTERM only, so a
closed terminal (SIGHUP) killed ``up`` and orphaned every child; it prints from inside its
signal handler, so a closed output pipe or terminal raised there and left it waiting; and its
children are forked helper processes running a shell running the program, which the
parent-death signal of ``storage.procs`` cannot reach. Here each child is the program itself,
in its own process group, started with ``die_with_parent`` from the main thread.

Shutdown has one trigger, ``Shutdown``: raised by the handler of SIGINT, SIGTERM or SIGHUP, or
by a write to a closed stdout (``| tee`` after Ctrl-C, a closed terminal). The handlers never
print; once stopping, a further signal only hurries the stop (SIGKILL instead of waiting).
"""

from __future__ import annotations

import os
import select
import selectors
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from types import FrameType
from typing import TextIO

from jobs.logs import json_line
from storage import procs

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
# Workers finish their running jobs on SIGTERM and the ingress answers its in-flight requests,
# each within SYNCNODE_SHUTDOWN_GRACE_SECONDS; this margin past it, what is left is SIGKILLed.
STOP_GRACE_SECONDS = 10.0
STOP_MARGIN_SECONDS = 5.0


class Shutdown(BaseException):
    """Stop everything ``up`` started (a BaseException so no ``except Exception`` swallows it)."""


class Guard:
    """Signal handlers and the output stream of ``up``; both end in ``Shutdown``."""

    def __init__(self, out: TextIO) -> None:
        self.out = out
        self.stopping = False
        self.hurry = False
        self.output_closed = False
        # A pipe whose reader is gone reports POLLERR even when no event is asked for, so a quiet
        # `up` notices `| tee` ending without waiting for a child to print something.
        self._poll: select.poll | None = select.poll()
        try:
            self._poll.register(out.fileno(), 0)
        except (OSError, ValueError):
            self._poll = None

    def install(self) -> None:
        for sig in STOP_SIGNALS:
            signal.signal(sig, self._on_signal)

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        if self.stopping:
            self.hurry = True
            return
        self.stopping = True
        raise Shutdown(signal.Signals(signum).name)

    def check_output(self) -> None:
        if self._poll is not None and not self.output_closed and self._poll.poll(0):
            self._closed()

    def say(self, text: str) -> None:
        """Write and flush; a closed pipe or terminal starts the shutdown (once) instead of a traceback."""
        if self.output_closed:
            return
        try:
            self.out.write(text)
            self.out.flush()
        except OSError:  # EPIPE (reader gone) or EIO (terminal gone)
            self._closed()

    def _closed(self) -> None:
        self.output_closed = True
        self._silence()
        if not self.stopping:
            self.stopping = True
            raise Shutdown("output closed") from None

    def _silence(self) -> None:
        # The interpreter flushes stdout at exit; pointing the fd at /dev/null keeps that quiet.
        try:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, self.out.fileno())
            os.close(devnull)
        except (OSError, ValueError):
            pass


@dataclass
class Child:
    name: str
    argv: list[str]
    env: dict[str, str]
    proc: subprocess.Popen[bytes] | None = None
    buf: bytes = b""
    returncode: int | None = None


class Supervisor:
    def __init__(self, guard: Guard, *, json_lines: bool = False, grace: float = STOP_GRACE_SECONDS) -> None:
        self.guard = guard
        self.grace = grace
        # With SYNCNODE_LOG_FORMAT=json the children already write JSON lines: relay them as they
        # are (a prefix would break them), and write our own lines and anything else as JSON too.
        self.json_lines = json_lines
        self.children: list[Child] = []
        self.width = 6
        self._sel = selectors.DefaultSelector()

    def add(self, name: str, argv: list[str], env: dict[str, str]) -> None:
        self.children.append(Child(name, argv, env))
        self.width = max(self.width, len(name))

    def _line(self, name: str, text: str) -> None:
        if not self.json_lines:
            self.guard.say(f"{time.strftime('%H:%M:%S')} {name:<{self.width}} | {text}\n")
        elif text.startswith("{") and text.endswith("}"):
            self.guard.say(text + "\n")
        elif text:
            logger = "syncnode.up" if name == "system" else "syncnode.output"
            self.guard.say(json_line(text, logger=logger, process=name) + "\n")

    def _start(self) -> None:
        preexec = procs.die_with_parent(signal.SIGTERM)
        for c in self.children:
            c.proc = subprocess.Popen(c.argv, env=c.env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                      stderr=subprocess.STDOUT, start_new_session=True, preexec_fn=preexec)
            assert c.proc.stdout is not None
            os.set_blocking(c.proc.stdout.fileno(), False)
            self._sel.register(c.proc.stdout, selectors.EVENT_READ, c)
            self._line("system", f"{c.name} started (pid {c.proc.pid})")

    def run(self, port: int, banner: str) -> int:
        """Start the children, relay output until a stop signal or a child exits, stop them all.

        ``banner`` is printed once ``port`` accepts connections, so it is the last thing a first
        run shows. Returns 0 after a requested stop, else the exit code of the child that ended.
        """
        code = 0
        try:
            self._start()
            shown = False
            while (ended := self._reap()) is None:
                self._relay(0.2)
                self.guard.check_output()
                if not shown and port_open(port):
                    self.guard.say(banner)
                    shown = True
            self.guard.stopping = True
            self._line("system", f"{ended.name} exited with code {ended.returncode}; stopping the others")
            code = ended.returncode or 1
        except Shutdown as why:
            self.guard.stopping = True
            self._say_quietly(f"{why} received, stopping" if str(why) != "output closed" else "output closed")
        finally:
            self._stop_all()
        return code

    def _say_quietly(self, text: str) -> None:
        try:
            self._line("system", text)
        except Shutdown:
            pass

    def _relay(self, timeout: float) -> None:
        for key, _ in self._sel.select(timeout):
            c: Child = key.data
            try:
                chunk = os.read(key.fd, 65536)
            except BlockingIOError:
                continue
            if not chunk:
                self._sel.unregister(key.fileobj)
                chunk = b"\n" if c.buf else b""
            *lines, c.buf = (c.buf + chunk).split(b"\n")
            for line in lines:
                self._line(c.name, line.decode(errors="replace").rstrip())

    def _reap(self) -> Child | None:
        for c in self.children:
            if c.proc is not None and c.returncode is None and c.proc.poll() is not None:
                c.returncode = c.proc.returncode
                return c
        return None

    def _stop_all(self) -> None:
        started = [c for c in self.children if c.proc is not None]
        for c in started:
            _killpg(c, signal.SIGTERM)
        deadline = time.monotonic() + self.grace
        while any(c.proc is not None and c.proc.poll() is None for c in started):
            if self.guard.hurry or time.monotonic() > deadline:
                break
            self._relay_quietly(0.1)
        for c in started:
            # Also reaches whatever a child forked into its group, even after the child itself ended.
            _killpg(c, signal.SIGKILL)
            assert c.proc is not None
            c.proc.wait()
        self._relay_quietly(0)
        for c in started:
            assert c.proc is not None and c.proc.stdout is not None
            c.proc.stdout.close()
        self._sel.close()

    def _relay_quietly(self, timeout: float) -> None:
        try:
            self._relay(timeout)
        except Shutdown:
            pass


def _killpg(c: Child, sig: int) -> None:
    assert c.proc is not None
    try:
        os.killpg(c.proc.pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def port_open(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0
