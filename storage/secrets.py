"""Encryption of stored provider keys and storage credentials under the master key, and the
hashing of SyncNode API keys (stored hashed, shown once)."""

from __future__ import annotations

import base64
import functools
import hashlib
import secrets

from cryptography.fernet import Fernet, InvalidToken
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

API_KEY_PREFIX = "sn_"


class SecretBox:
    """Fernet (AES-128-CBC + HMAC-SHA256) with a key derived from any master key string."""

    def __init__(self, master_key: str) -> None:
        raw = HKDF(algorithm=hashes.SHA256(), length=32, salt=b"syncnode", info=b"secret-box").derive(
            master_key.encode()
        )
        self._fernet = Fernet(base64.urlsafe_b64encode(raw))
        # Workers decrypt the same few keys for every job; Fernet's HMAC + AES is per call.
        self.decrypt = functools.lru_cache(maxsize=4096)(self._decrypt)  # type: ignore[method-assign]

    def encrypt(self, plaintext: str) -> bytes:
        return self._fernet.encrypt(plaintext.encode())

    def decrypt(self, token: bytes) -> str:
        return self._decrypt(token)

    def _decrypt(self, token: bytes) -> str:
        try:
            return self._fernet.decrypt(token).decode()
        except InvalidToken as e:
            raise ValueError("stored secret cannot be decrypted: was SYNCNODE_MASTER_KEY changed?") from e


def mask(secret: str) -> str:
    """``sk-or-v1-abcdef…a1b2``: enough to recognise a key, never enough to use it."""
    if len(secret) <= 8:
        return "…" + secret[-2:]
    head = secret[: min(6, len(secret) // 4)]
    return f"{head}…{secret[-4:]}"


def new_api_key() -> str:
    return API_KEY_PREFIX + secrets.token_urlsafe(32)


def hash_api_key(key: str) -> bytes:
    # The key has 256 bits of entropy, so a fast hash is enough (no password stretching needed).
    return hashlib.sha256(key.encode()).digest()
