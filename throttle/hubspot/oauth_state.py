"""The OAuth `state` parameter: signed, expiring, single use — the install flow's CSRF guard.

`state` = `<nonce>.<expires epoch s>.<HMAC-SHA256(key, nonce.expires), base64url>`, the key
derived from SECRET_KEY_BASE for this one purpose. Forged or expired states fail the signature or
time check without touching Redis; a valid one is then claimed once with Redis `SET NX` (the claim
lives until the state would have expired anyway), so a replayed callback URL stores nothing.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import time
from dataclasses import dataclass
from typing import Any

from throttle.engine import keys

DEFAULT_TTL_S = 600


class StateError(Exception):
    """The state is missing, forged, expired or already used; the message is safe to show."""


@dataclass(frozen=True)
class VerifiedState:
    nonce: str
    expires_at: int


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


class OAuthStateSigner:
    def __init__(self, secret_key_base: str, ttl_s: int = DEFAULT_TTL_S) -> None:
        self._key = hmac.new(
            secret_key_base.encode(), b"throttle oauth state v1", hashlib.sha256
        ).digest()
        self.ttl_s = ttl_s

    def _sign(self, payload: str) -> str:
        return _b64(hmac.new(self._key, payload.encode(), hashlib.sha256).digest())

    def issue(self, now: float | None = None) -> str:
        now = time.time() if now is None else now
        payload = f"{secrets.token_urlsafe(18)}.{int(now) + self.ttl_s}"
        return f"{payload}.{self._sign(payload)}"

    def verify(self, state: str | None, now: float | None = None) -> VerifiedState:
        """Signature and expiry; does not consume the state (see `claim`)."""
        now = time.time() if now is None else now
        if not state:
            raise StateError("the state parameter is missing")
        parts = state.split(".")
        if len(parts) != 3 or not parts[1].isdigit():
            raise StateError("the state parameter is malformed")
        nonce, expires, signature = parts
        if not hmac.compare_digest(self._sign(f"{nonce}.{expires}"), signature):
            raise StateError("the state parameter was not issued by this service")
        if int(expires) < now:
            raise StateError("the install link expired; start the install again")
        return VerifiedState(nonce, int(expires))

    async def claim(self, redis: Any, state: VerifiedState, now: float | None = None) -> None:
        """Mark the state used; a second claim (a replayed callback) raises StateError."""
        now = time.time() if now is None else now
        ttl = max(int(state.expires_at - now) + 1, 1)
        first = await redis.set(keys.oauth_state_used(state.nonce), b"1", nx=True, ex=ttl)
        if not first:
            raise StateError("this install link was already used; start the install again")
