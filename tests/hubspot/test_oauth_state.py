"""The OAuth state: signed by SECRET_KEY_BASE, expiring, and usable once (Redis SET NX)."""

from __future__ import annotations

from typing import Any

import pytest

from throttle.hubspot.oauth_state import OAuthStateSigner, StateError

KEY = "k" * 40


def test_state_round_trip_and_tampering() -> None:
    signer = OAuthStateSigner(KEY, ttl_s=600)
    issued = signer.issue(now=1000.0)
    state, browser = issued.state, issued.browser_key
    verified = signer.verify(state, browser, now=1500.0)
    assert verified.expires_at == 1600
    nonce, expires, binding, signature = state.split(".")
    assert browser not in state  # the state carries a hash of the browser's key, not the key
    with pytest.raises(StateError, match="not issued"):
        signer.verify(f"{nonce}.{int(expires) + 3600}.{binding}.{signature}", browser, now=1500.0)
    with pytest.raises(StateError, match="not issued"):
        OAuthStateSigner("x" * 40).verify(state, browser, now=1500.0)
    with pytest.raises(StateError, match="expired"):
        signer.verify(state, browser, now=1601.0)
    for bad in ("", None, "a.b", "a.b.c", "a.1.c.d", "a.b.c.d", "a." + "9" * 5000 + ".c.d"):
        with pytest.raises(StateError):
            signer.verify(bad, browser, now=1500.0)


@pytest.mark.parametrize(
    "state",
    ["\u00e9", "n\u00f6nce.1600.b.s", "nonce.1600.b.s\u00e9", "nonce.\u0661\u0666\u0660\u0660.b.s"],
)
def test_a_non_ascii_state_is_malformed_not_a_crash(state: str) -> None:
    """hmac.compare_digest raises TypeError on non-ASCII text: once a 500 with a traceback."""
    with pytest.raises(StateError, match="malformed"):
        OAuthStateSigner(KEY).verify(state, "browser", now=1500.0)


def test_state_is_bound_to_the_browser_that_started_the_install() -> None:
    signer = OAuthStateSigner(KEY)
    mine, theirs = signer.issue(), signer.issue()
    signer.verify(mine.state, mine.browser_key)
    with pytest.raises(StateError, match="another browser"):
        signer.verify(mine.state, theirs.browser_key)
    for missing in (None, ""):
        with pytest.raises(StateError, match="cookie is missing"):
            signer.verify(mine.state, missing)
    with pytest.raises(StateError, match="cookie is missing"):
        signer.verify(mine.state, "k\u00e9y")


async def test_state_is_single_use(redis: Any) -> None:
    signer = OAuthStateSigner(KEY)
    issued = signer.issue()
    verified = signer.verify(issued.state, issued.browser_key)
    await signer.claim(redis, verified)
    with pytest.raises(StateError, match="already used"):
        await signer.claim(redis, verified)
    other = signer.issue()
    await signer.claim(redis, signer.verify(other.state, other.browser_key))
