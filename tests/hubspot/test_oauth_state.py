"""The OAuth state: signed by SECRET_KEY_BASE, expiring, and usable once (Redis SET NX)."""

from __future__ import annotations

from typing import Any

import pytest

from throttle.hubspot.oauth_state import OAuthStateSigner, StateError

KEY = "k" * 40


def test_state_round_trip_and_tampering() -> None:
    signer = OAuthStateSigner(KEY, ttl_s=600)
    state = signer.issue(now=1000.0)
    verified = signer.verify(state, now=1500.0)
    assert verified.expires_at == 1600
    nonce, expires, signature = state.split(".")
    with pytest.raises(StateError, match="not issued"):
        signer.verify(f"{nonce}.{int(expires) + 3600}.{signature}", now=1500.0)
    with pytest.raises(StateError, match="not issued"):
        OAuthStateSigner("x" * 40).verify(state, now=1500.0)
    with pytest.raises(StateError, match="expired"):
        signer.verify(state, now=1601.0)
    for bad in ("", None, "a.b", "a.b.c", "a.1.c.d"):
        with pytest.raises(StateError):
            signer.verify(bad, now=1500.0)


async def test_state_is_single_use(redis: Any) -> None:
    signer = OAuthStateSigner(KEY)
    verified = signer.verify(signer.issue())
    await signer.claim(redis, verified)
    with pytest.raises(StateError, match="already used"):
        await signer.claim(redis, verified)
    other = signer.verify(signer.issue())
    await signer.claim(redis, other)
