"""argon2id password hashes (argon2-cffi's defaults: t=3, m=64 MiB, p=4), off the event loop."""

from __future__ import annotations

import asyncio

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from jobs.errors import BadRequest

_HASHER = PasswordHasher()
# Verified when the email is unknown, so a wrong email costs as long as a wrong password.
_DUMMY = _HASHER.hash("not a password of anyone")
MIN_LENGTH, MAX_LENGTH = 8, 1024


def check_strength(password: str) -> None:
    if not MIN_LENGTH <= len(password) <= MAX_LENGTH:
        raise BadRequest(f"Invalid password: use {MIN_LENGTH} to {MAX_LENGTH} characters")


def hash_password(password: str) -> str:
    return _HASHER.hash(password)


async def hash_password_async(password: str) -> str:
    return await asyncio.to_thread(_HASHER.hash, password)


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

    return await asyncio.to_thread(run)
