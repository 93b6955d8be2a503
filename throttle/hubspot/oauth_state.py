"""The OAuth `state` parameter: signed, expiring, single use, bound to one browser — the install
flow's CSRF guard.

`state` = `<nonce>.<expires epoch s>.<binding>.<HMAC-SHA256(key, nonce.expires.binding)>`
(base64url), the key derived from SECRET_KEY_BASE for this one purpose. `binding` is a hash of a
random value the browser that started the install holds in a cookie (`issue` returns both): a
state is accepted only from that browser, so an attacker cannot start an install and slip its
callback link (its own portal's code and a valid state) to an admin. Forged or expired states fail
the signature or time check without touching Redis; a valid one is then claimed once with Redis
`SET NX` (the claim lives until the state would have expired anyway), so a replayed callback URL
stores nothing.
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


@dataclass(frozen=True)
class IssuedState:
    state: str
    """For HubSpot's authorize URL."""
    browser_key: str
    """For the starting browser's cookie; `verify` wants it back."""


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


class PurposeSigner:
    """HMAC-SHA256 under a key derived from a secret for one purpose, so a value signed for one
    use (an OAuth state, a console session, a console link) never passes as another."""

    def __init__(self, secret: str, purpose: bytes) -> None:
        self._key = hmac.new(secret.encode(), purpose, hashlib.sha256).digest()

    def sign(self, payload: str) -> str:
        return b64url(hmac.new(self._key, payload.encode(), hashlib.sha256).digest())

    def matches(self, payload: str, signature: str) -> bool:
        """Constant time; False (never a TypeError) for a signature that is not ASCII."""
        return signature.isascii() and hmac.compare_digest(self.sign(payload), signature)


class OAuthStateSigner:
    def __init__(
        self, secret_key_base: str, ttl_s: int = DEFAULT_TTL_S, purpose: bytes = b""
    ) -> None:
        self._signer = PurposeSigner(secret_key_base, b"throttle oauth state v1" + purpose)
        self.ttl_s = ttl_s

    def _sign(self, payload: str) -> str:
        return self._signer.sign(payload)

    @staticmethod
    def _binding(browser_key: str) -> str:
        return b64url(hashlib.sha256(browser_key.encode()).digest()[:16])

    def issue(self, now: float | None = None) -> IssuedState:
        now = time.time() if now is None else now
        browser_key = secrets.token_urlsafe(24)
        payload = (
            f"{secrets.token_urlsafe(18)}.{int(now) + self.ttl_s}.{self._binding(browser_key)}"
        )
        return IssuedState(f"{payload}.{self._sign(payload)}", browser_key)

    def verify(
        self, state: str | None, browser_key: str | None, now: float | None = None
    ) -> VerifiedState:
        """Signature, expiry and browser; does not consume the state (see `claim`)."""
        now = time.time() if now is None else now
        if not state:
            raise StateError("the state parameter is missing")
        parts = state.split(".")
        # ASCII first: hmac.compare_digest raises TypeError on other strings (once a 500).
        if not state.isascii() or len(parts) != 4 or not parts[1].isdigit() or len(parts[1]) > 12:
            raise StateError("the state parameter is malformed")
        nonce, expires, binding, signature = parts
        if not hmac.compare_digest(self._sign(f"{nonce}.{expires}.{binding}"), signature):
            raise StateError("the state parameter was not issued by this service")
        if int(expires) < now:
            raise StateError("the install link expired; start the install again")
        if not browser_key or not browser_key.isascii():
            raise StateError(
                "this browser did not start the install (its install cookie is missing); "
                "start the install again from this browser"
            )
        if not hmac.compare_digest(self._binding(browser_key), binding):
            raise StateError(
                "the install was started in another browser (its install cookie does not "
                "match); start the install again from this browser"
            )
        return VerifiedState(nonce, int(expires))

    async def claim(self, redis: Any, state: VerifiedState, now: float | None = None) -> None:
        """Mark the state used; a second claim (a replayed callback) raises StateError."""
        now = time.time() if now is None else now
        ttl = max(int(state.expires_at - now) + 1, 1)
        first = await redis.set(keys.oauth_state_used(state.nonce), b"1", nx=True, ex=ttl)
        if not first:
            raise StateError("this install link was already used; start the install again")
