"""Console sessions and console links: signed, expiring tokens bound to exactly one portal.

A token is `<payload>.<signature>`: the payload is base64url JSON `{k: kind, p: portal, r: role,
w: who, e: expires (epoch s), n: nonce}` and the signature HMAC-SHA256 under a key derived from
CONSOLE_SESSION_KEY for the token's kind (`PurposeSigner`, shared with the OAuth state), so a
link never passes as a session cookie nor the reverse. Nothing is stored server-side: a forged or
expired token fails the signature or time check. The CSRF token of a session is another
signature of the session's nonce (under its own derived key): a page's forms carry it, every POST
is checked against the cookie's session in constant time, and a cross-site page, which can read
neither, cannot produce it.
"""

from __future__ import annotations

import base64
import binascii
import json
import secrets
import time
from dataclasses import dataclass
from typing import Literal

from throttle.hubspot.oauth_state import PurposeSigner, b64url

Role = Literal["viewer", "operator"]
Kind = Literal["session", "link"]
ROLES: tuple[Role, ...] = ("viewer", "operator")
MAX_TOKEN_CHARS = 2048
"""Longer is not ours: refused before any decoding."""


class SessionError(Exception):
    """The token is missing, forged, malformed or expired; the message is safe to show."""


@dataclass(frozen=True)
class Session:
    portal_id: int
    role: Role
    who: str
    """The HubSpot user's email, or `link:<name>` for a console link."""
    expires_at: int
    nonce: str

    @property
    def operator(self) -> bool:
        return self.role == "operator"


class SessionSigner:
    def __init__(self, key: str) -> None:
        self._signers = {
            kind: PurposeSigner(key, f"throttle console {kind} v1".encode())
            for kind in ("session", "link", "csrf")
        }

    def issue(
        self, kind: Kind, portal_id: int, role: Role, who: str, expires_at: float
    ) -> tuple[str, Session]:
        session = Session(portal_id, role, who, int(expires_at), secrets.token_urlsafe(12))
        data = {"k": kind, "p": portal_id, "r": role, "w": who, "e": session.expires_at}
        payload = b64url(json.dumps({**data, "n": session.nonce}).encode())
        return f"{payload}.{self._signers[kind].sign(payload)}", session

    def read(self, kind: Kind, token: str | None, now: float | None = None) -> Session:
        now = time.time() if now is None else now
        if not token:
            raise SessionError("not signed in")
        payload, _, signature = token.partition(".")
        if len(token) > MAX_TOKEN_CHARS or not self._signers[kind].matches(payload, signature):
            raise SessionError(f"this {kind} was not issued by this console")
        try:
            data = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
            session = Session(
                int(data["p"]), data["r"], str(data["w"]), int(data["e"]), str(data["n"])
            )
        except (binascii.Error, ValueError, KeyError, TypeError):
            raise SessionError(f"this {kind} is malformed") from None
        if data.get("k") != kind or session.role not in ROLES:
            raise SessionError(f"this {kind} is malformed")
        if session.expires_at < now:
            raise SessionError(f"this {kind} expired")
        return session

    def csrf_token(self, session: Session) -> str:
        return self._signers["csrf"].sign(f"{session.portal_id}.{session.nonce}")

    def csrf_ok(self, session: Session, presented: str | None) -> bool:
        """Constant time, whatever was presented (missing, not ASCII)."""
        return bool(presented) and self._signers["csrf"].matches(
            f"{session.portal_id}.{session.nonce}", str(presented)
        )
