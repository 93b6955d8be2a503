"""AES-256-GCM for OAuth tokens at rest.

Each ciphertext is bound to its portal id (associated data), so a row copied onto another portal's
row does not decrypt; the id of the key that sealed it is stored beside it, so several keys can be
configured at once while `throttle rotate-keys` moves every row to the newest one.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from throttle.settings import EncryptionKey

NONCE_BYTES = 12


class CryptoError(Exception):
    """A ciphertext cannot be opened; the message never contains key material or plaintext."""


class UnknownKeyError(CryptoError):
    """The row was sealed with a key that is no longer configured."""


@dataclass(frozen=True)
class Sealed:
    """A ciphertext (nonce first) and the id of the key that sealed it."""

    key_id: str
    blob: bytes


class TokenCipher:
    """Seals with the newest key, opens with whichever configured key a row names."""

    def __init__(self, keys: Sequence[EncryptionKey]) -> None:
        if not keys:
            raise CryptoError("ENCRYPTION_KEY is not set: no key to encrypt tokens with")
        self._newest = keys[0]
        self._keys = {key.key_id: AESGCM(key.material) for key in keys}

    @property
    def current_key_id(self) -> str:
        return self._newest.key_id

    @property
    def key_ids(self) -> list[str]:
        return list(self._keys)

    def seal(self, plaintext: str, portal_id: int) -> Sealed:
        nonce = os.urandom(NONCE_BYTES)
        aead = self._keys[self._newest.key_id]
        blob = nonce + aead.encrypt(nonce, plaintext.encode(), _aad(portal_id))
        return Sealed(self._newest.key_id, blob)

    def open(self, sealed: Sealed, portal_id: int) -> str:
        aead = self._keys.get(sealed.key_id)
        if aead is None:
            raise UnknownKeyError(
                f"token of portal {portal_id} is sealed with key id {sealed.key_id}, "
                "which ENCRYPTION_KEY no longer holds"
            )
        nonce, ciphertext = sealed.blob[:NONCE_BYTES], sealed.blob[NONCE_BYTES:]
        try:
            return aead.decrypt(nonce, ciphertext, _aad(portal_id)).decode()
        except InvalidTag:
            raise CryptoError(
                f"token of portal {portal_id} does not open with key id {sealed.key_id} "
                "(tampered, or copied from another portal)"
            ) from None


def _aad(portal_id: int) -> bytes:
    return f"portal:{portal_id}".encode()
