"""Passwords for the embedded Postgres and Redis.

Both listen on 127.0.0.1, which every user of the machine can reach: without a password any
local user could read the ledger, forge a session in Redis or run SQL as the superuser. Each
server gets a random password on first start, kept next to its data in a 0600 file; the URLs
``syncnode up`` hands its children (and the CLI's own connections) carry it.

Data directories created before this (Postgres initialised with ``--auth=trust``) are switched
over on their next start: the password is set in single-user mode, which needs no connection
and so no authentication, then pg_hba.conf's ``trust`` lines become ``scram-sha-256``.
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


def read_secret(path: Path) -> str | None:
    try:
        value = path.read_text().strip()
    except OSError:
        return None
    return value or None


def write_secret(path: Path, value: str) -> None:
    """Write ``value`` readable by this user only, atomically (a half-written file never shows)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(value + "\n")
    os.replace(tmp, path)


def new_password() -> str:
    return secrets.token_urlsafe(24)  # URL-safe: goes into DSNs and redis.conf as it is


@contextmanager
def pwfile(password: str, near: Path, user: str | None) -> Iterator[Path]:
    """A short-lived file holding ``password`` for initdb, readable by the user it runs as."""
    path = near / f".pwfile.{os.getpid()}"
    write_secret(path, password)
    try:
        if user:
            shutil.chown(path, user, user)
        yield path
    finally:
        path.unlink(missing_ok=True)


_TRUST = re.compile(r"^(\s*(?:local|host\w*)\s.*?)\btrust(\s*)$", re.M)


def secure_trust_cluster(postgres: Path, data_dir: Path, password: str, run_as: dict[str, Any]) -> None:
    """Give an existing trust-authenticated cluster a superuser password and require it.

    Runs while no server uses ``data_dir``. Safe to repeat: a crash before the caller records
    the password leaves a cluster that the next start sets a (new) password on again."""
    r = subprocess.run([str(postgres), "--single", "-D", str(data_dir), "-c", "password_encryption=scram-sha-256",
                        "postgres"], input=f"ALTER USER postgres PASSWORD '{password}'\n".encode(),
                       capture_output=True, check=False, **run_as)
    if r.returncode != 0 or b"ERROR" in r.stdout + r.stderr:
        raise RuntimeError("could not set the Postgres password in single-user mode: "
                           + (r.stderr or r.stdout).decode(errors="replace")[-300:])
    hba = data_dir / "pg_hba.conf"
    text = hba.read_text()
    secured = _TRUST.sub(r"\1scram-sha-256\2", text)
    if secured != text:
        tmp = data_dir / ".pg_hba.conf.tmp"
        tmp.write_text(secured)
        shutil.copymode(hba, tmp)
        st = hba.stat()
        if os.geteuid() == 0:
            os.chown(tmp, st.st_uid, st.st_gid)
        os.replace(tmp, hba)


def redis_config(data_dir: Path, password: str) -> Path:
    """redis.conf with the password: on the command line it would show in every user's ``ps``."""
    path = data_dir / "auth.conf"
    write_secret(path, f"requirepass {password}\nprotected-mode yes")
    return path
