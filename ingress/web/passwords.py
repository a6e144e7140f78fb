"""argon2id password hashes (argon2-cffi's defaults: t=3, m=64 MiB, p=4), off the event loop.

Each hash costs 64 MiB and tens of ms of CPU, so a burst of sign-ins must not be able to start
as many as it likes: a per-process semaphore bounds them, and they run on their own small thread
pool rather than asyncio's default executor, which DNS lookups and other to_thread work share."""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from jobs.errors import BadRequest

_HASHER = PasswordHasher()
# Verified when the email is unknown, so a wrong email costs as long as a wrong password.
_DUMMY = _HASHER.hash("not a password of anyone")
MIN_LENGTH, MAX_LENGTH = 8, 1024
T = TypeVar("T")

_concurrency = 2
_pool: ThreadPoolExecutor | None = None
# A semaphore belongs to one event loop; tests (and reloads) run several.
_gates: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Semaphore] = weakref.WeakKeyDictionary()


def configure(concurrency: int) -> None:
    """Set how many hashes may run at once in this process (settings.password_hash_concurrency)."""
    global _concurrency, _pool
    n = max(1, concurrency)
    if n != _concurrency:
        if _pool is not None:
            _pool.shutdown(wait=False)
        _concurrency, _pool = n, None
        _gates.clear()


async def _run(fn: Callable[[], T]) -> T:
    global _pool
    loop = asyncio.get_running_loop()
    gate = _gates.get(loop)
    if gate is None:
        gate = _gates[loop] = asyncio.Semaphore(_concurrency)
    if _pool is None:
        _pool = ThreadPoolExecutor(max_workers=_concurrency, thread_name_prefix="argon2")
    async with gate:
        return await loop.run_in_executor(_pool, fn)


def check_strength(password: str) -> None:
    if not MIN_LENGTH <= len(password) <= MAX_LENGTH:
        raise BadRequest(f"Invalid password: use {MIN_LENGTH} to {MAX_LENGTH} characters")
    if len(set(password)) < 3 or not password.strip():
        # Eight spaces, or "aaaaaaaa": length alone lets through what anyone would guess first.
        raise BadRequest("Invalid password: use at least three different characters, not only blanks")


def hash_password(password: str) -> str:
    return _HASHER.hash(password)


async def hash_password_async(password: str) -> str:
    return await _run(lambda: _HASHER.hash(password))


async def verify(stored: str | None, password: str) -> tuple[bool, str | None]:
    """(matches, a fresh hash when the stored one uses outdated parameters)."""

    def run() -> tuple[bool, str | None]:
        try:
            _HASHER.verify(stored or _DUMMY, password)
        except (VerificationError, InvalidHashError):
            return False, None
        if stored is None:
            return False, None
        return True, _HASHER.hash(password) if _HASHER.check_needs_rehash(stored) else None

    return await _run(run)
