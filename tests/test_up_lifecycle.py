"""``syncnode up`` as a newcomer lives it: every way it can be told to stop stops everything.

Each test runs the real command (``python -m ingress.cli up``) with DATABASE_URL and REDIS_URL
unset, so it starts its embedded Postgres and Redis, the ingress and one worker per pool, on a
data directory of its own. The processes are recorded once /healthz answers; after the stop
every one of them must be gone and nothing may listen on the port.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import psutil
import pytest

from ingress.instance import clean_stale
from storage.embedded import EmbeddedPostgres, EmbeddedRedis, free_port

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]


def _env(data_dir: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL")}
    env.update(SYNCNODE_DATA_DIR=str(data_dir), PYTHONPATH=str(ROOT), PYTHONUNBUFFERED="1")
    return env


class Up:
    """One ``syncnode up``; its stdout is a pipe this test reads (and may close)."""

    def __init__(self, data_dir: Path, *, bare: bool = False) -> None:
        self.port = free_port()
        self.data_dir = data_dir
        self.read_fd, write_fd = os.pipe()
        os.set_blocking(self.read_fd, False)
        # unshare execs the script, which execs Python: the pid is still that of `up` itself.
        prefix = ["unshare", "-m", str(ROOT / ".ci" / "without-system-servers")] if bare else []
        self.proc = subprocess.Popen([*prefix, sys.executable, "-m", "ingress.cli", "up", "--port", str(self.port)],
                                     env=_env(data_dir), cwd=ROOT, stdout=write_fd, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        os.close(write_fd)
        self.output = b""
        self.tree: list[psutil.Process] = []

    def drain(self) -> None:
        if self.read_fd < 0:
            return
        try:
            while chunk := os.read(self.read_fd, 65536):
                self.output += chunk
        except BlockingIOError:
            pass

    def close_stdout(self) -> None:
        self.drain()
        os.close(self.read_fd)
        self.read_fd = -1

    def wait_healthy(self, timeout: float = 120.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.drain()
            assert self.proc.poll() is None, f"up exited {self.proc.returncode}:\n{self.output.decode()}"
            try:
                if httpx.get(f"http://127.0.0.1:{self.port}/healthz", timeout=1).status_code == 200:
                    self.tree = psutil.Process(self.proc.pid).children(recursive=True)
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise AssertionError(f"/healthz never answered:\n{self.output.decode()}")

    def wait_exit(self, timeout: float = 30.0) -> int:
        deadline = time.monotonic() + timeout
        while self.proc.poll() is None and time.monotonic() < deadline:
            self.drain()
            time.sleep(0.1)
        self.drain()
        assert self.proc.poll() is not None, f"up still running after {timeout}s:\n{self.output.decode()}"
        return self.proc.returncode

    def assert_all_gone(self, timeout: float = 5.0) -> None:
        assert len(self.tree) >= 8, [p.name() for p in self.tree]  # Postgres, Redis, web, five pools
        _, alive = psutil.wait_procs(self.tree, timeout=timeout)
        alive = [p for p in alive if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
        assert not alive, [(p.pid, p.cmdline()) for p in alive]
        with socket.socket() as s:
            assert s.connect_ex(("127.0.0.1", self.port)) != 0, "something still listens on the port"
        assert not (self.data_dir / "syncnode.pid").exists()

    def kill_leftovers(self) -> None:
        for p in [*self.tree, psutil.Process(self.proc.pid)] if self.proc.poll() is None else self.tree:
            try:
                p.kill()
            except psutil.Error:
                pass
        if self.read_fd >= 0:
            os.close(self.read_fd)
            self.read_fd = -1


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A data directory initialised and migrated once; each test starts from a copy (saves ~2 s a start)."""
    import asyncio

    from storage.migrate import migrate

    data = tmp_path_factory.mktemp("template") / "data"
    pg = EmbeddedPostgres(data / "postgres", fsync=False)
    try:
        asyncio.run(migrate(pg.start()))
    finally:
        pg.stop()
    return data


@pytest.fixture
def up(tmp_path: Path, template: Path) -> Iterator[Up]:
    # cp -a keeps the owner: as root, Postgres runs as an unprivileged user that must own its files.
    subprocess.run(["cp", "-a", str(template), str(tmp_path / "data")], check=True)
    u = Up(tmp_path / "data")
    try:
        yield u
    finally:
        u.kill_leftovers()


# SIGTERM: test_bare_machine_runs_on_wheels_and_stops, and `syncnode down` below.
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGHUP], ids=lambda s: s.name)
def test_signal_stops_everything(up: Up, sig: signal.Signals) -> None:
    up.wait_healthy()
    up.proc.send_signal(sig)
    assert up.wait_exit() == 0, up.output.decode()
    up.assert_all_gone()
    assert b"Traceback" not in up.output, up.output.decode()


def _can_unshare() -> bool:
    return os.geteuid() == 0 and subprocess.run(["unshare", "-m", "true"], capture_output=True).returncode == 0


@pytest.mark.skipif(not sys.platform.startswith("linux") or not _can_unshare(), reason="needs root and unshare -m")
def test_bare_machine_runs_on_wheels_and_stops(tmp_path: Path) -> None:
    """System Postgres and Redis hidden (as on a fresh machine): the wheels' servers run, SIGTERM stops all."""
    up = Up(tmp_path / "data", bare=True)
    try:
        up.wait_healthy()
        cmdlines = [" ".join(p.cmdline()) for p in up.tree]
        assert any("site-packages" in c and "pginstall/bin/postgres" in c for c in cmdlines), cmdlines
        assert any("site-packages" in c and "-server" in c for c in cmdlines), cmdlines
        up.proc.send_signal(signal.SIGTERM)
        assert up.wait_exit() == 0, up.output.decode()
        up.assert_all_gone()
    finally:
        up.kill_leftovers()


def test_closed_stdout_stops_everything(up: Up) -> None:
    """`make run | tee log`, then tee goes away: up must notice even if nothing prints."""
    up.wait_healthy()
    up.close_stdout()
    assert up.wait_exit() == 0
    up.assert_all_gone()


def test_second_start_says_so_in_one_line_then_down_and_stale_starts_work(up: Up, tmp_path: Path) -> None:
    up.wait_healthy()
    second = subprocess.run([sys.executable, "-m", "ingress.cli", "up", "--port", str(free_port())],
                            env=_env(up.data_dir), cwd=ROOT, capture_output=True, text=True, timeout=30)
    assert second.returncode != 0
    assert second.stdout == ""
    lines = second.stderr.strip().splitlines()
    assert len(lines) == 1, second.stderr
    assert "already running" in lines[0] and f"(pid {up.proc.pid})" in lines[0] and "syncnode down" in lines[0]
    assert up.proc.poll() is None, "the running instance must be left alone"

    # SIGKILL leaves a stale pid file; the children die with it (parent-death signal).
    up.proc.kill()
    up.wait_exit()
    _, alive = psutil.wait_procs(up.tree, timeout=10)
    assert not [p for p in alive if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    assert (up.data_dir / "syncnode.pid").exists()

    again = Up(up.data_dir)
    try:
        again.wait_healthy()
        down = subprocess.run([sys.executable, "-m", "ingress.cli", "down"], env=_env(up.data_dir), cwd=ROOT,
                              capture_output=True, text=True, timeout=60)
        assert down.returncode == 0, down.stderr
        assert f"Stopped SyncNode (pid {again.proc.pid})" in down.stdout
        assert again.wait_exit() == 0
        again.assert_all_gone()
    finally:
        again.kill_leftovers()


def test_down_when_nothing_runs(tmp_path: Path) -> None:
    down = subprocess.run([sys.executable, "-m", "ingress.cli", "down"], env=_env(tmp_path / "data"), cwd=ROOT,
                          capture_output=True, text=True, timeout=30)
    assert down.returncode == 0
    assert "not running" in down.stdout


def test_stale_servers_are_stopped_before_a_new_start(tmp_path: Path) -> None:
    """Where no parent-death signal exists, a dead up's Postgres and Redis outlive it."""
    data = tmp_path / "data"
    pg, rd = EmbeddedPostgres(data / "postgres", fsync=False), EmbeddedRedis(data / "redis", persist=False)
    pg.start()
    rd.start()
    try:
        assert clean_stale(data) == ["Redis", "Postgres"]
        assert pg.proc is not None and rd.proc is not None
        assert pg.proc.wait(10) is not None and rd.proc.wait(10) is not None
        assert not (data / "postgres" / "postmaster.pid").exists()
        assert clean_stale(data) == []
        # A pid file naming a live process that is not Postgres (a reused pid) is removed, not obeyed.
        (data / "postgres" / "postmaster.pid").write_text(f"{os.getpid()}\n")
        assert clean_stale(data) == []
        assert not (data / "postgres" / "postmaster.pid").exists()
    finally:
        rd.stop()
        pg.stop()


def test_port_taken_by_another_program_is_said_in_one_line(tmp_path: Path) -> None:
    # It used to start everything, print the banner (the port answered: the other program's
    # server), and the ingress's failed bind scrolled by among the workers' start-up lines.
    with socket.socket() as other:
        other.bind(("127.0.0.1", 0))
        other.listen()
        port = other.getsockname()[1]
        up = subprocess.run([sys.executable, "-m", "ingress.cli", "up", "--port", str(port)],
                            env=_env(tmp_path / "data"), cwd=ROOT, capture_output=True, text=True, timeout=30)
    assert up.returncode == 1
    assert up.stdout == ""
    lines = up.stderr.strip().splitlines()
    assert len(lines) == 1, up.stderr
    assert f"port {port} is already in use" in lines[0] and "--port" in lines[0]
    assert not (tmp_path / "data" / "postgres").exists(), "nothing is started"
    assert not (tmp_path / "data" / "syncnode.pid").exists()


@pytest.mark.parametrize(("open_signup", "said"), [(False, "sign-up needs SYNCNODE_OPEN_SIGNUP=true"),
                                                   (True, "open sign-up is on")])
def test_the_banner_says_how_sign_up_stands(open_signup: bool, said: str) -> None:
    from ingress.cli import up_banner

    text = up_banner("http://localhost:8000", "make", open_signup)
    assert f"web UI:             http://localhost:8000/   ({said})" in text
