"""The install flow's `state`: issued by us, used once, never forged, never stale.

A replayed callback URL (browser history, a proxy log, a shared link) must store nothing: the
state is claimed before the code is exchanged, so the second use is refused without a call to
HubSpot and without touching the token table.
"""

from __future__ import annotations

import time
from urllib.parse import parse_qs, urlsplit

from tests.fixtures.live_webhook import LiveWebhook
from throttle.hubspot.oauth_state import OAuthStateSigner

INSTALLING_PORTAL = 777001


def _authorize(live: LiveWebhook) -> tuple[str, str]:
    """Follow our authorize redirect to the simulator and back: (code, state) for the callback."""
    ours = live.http.get(live.url + "/api/oauth/authorize", allow_redirects=False, timeout=30)
    assert ours.status_code == 302, ours.text
    location = ours.headers["Location"]
    assert location.startswith(live.sim_url)
    hubspot = live.http.get(
        location + f"&portal_id={INSTALLING_PORTAL}", allow_redirects=False, timeout=30
    )
    assert hubspot.status_code == 302, hubspot.text
    query = parse_qs(urlsplit(hubspot.headers["Location"]).query)
    return query["code"][0], query["state"][0]


def _callback(live: LiveWebhook, code: str, state: str) -> object:
    return live.http.get(
        live.url + "/api/oauth/callback",
        params={"code": code, "state": state},
        headers={"Accept": "application/json"},
        timeout=30,
    )


def _exchanges(live: LiveWebhook) -> int:
    return sum(1 for code in live.sim.codes.values() if code.used)


def test_a_state_works_once_and_a_replay_stores_nothing(live_webhook: LiveWebhook) -> None:
    code, state = _authorize(live_webhook)
    first = _callback(live_webhook, code, state)
    assert first.status_code == 200, first.text  # type: ignore[attr-defined]
    assert _exchanges(live_webhook) == 1
    after_install = live_webhook.fingerprint()

    replay = _callback(live_webhook, code, state)
    assert replay.status_code == 400, replay.text  # type: ignore[attr-defined]
    assert "already used" in replay.json()["detail"]  # type: ignore[attr-defined]

    # The same state with a fresh code from another install is refused too.
    other_code, _ = _authorize(live_webhook)
    reused = _callback(live_webhook, other_code, state)
    assert reused.status_code == 400  # type: ignore[attr-defined]
    assert _exchanges(live_webhook) == 1, "a refused callback still exchanged its code"
    assert live_webhook.fingerprint() == after_install


def test_forged_tampered_and_expired_states_are_refused(live_webhook: LiveWebhook) -> None:
    code, state = _authorize(live_webhook)
    before = live_webhook.fingerprint()
    secret = live_webhook.settings.secret_key_base
    assert secret is not None
    nonce, expires, signature = state.split(".")
    expired = OAuthStateSigner(secret.get_secret_value()).issue(now=time.time() - 3600)
    for bad in (
        "",
        "not-a-state",
        f"{nonce}.{int(expires) + 3600}.{signature}",
        f"{nonce}x.{expires}.{signature}",
        OAuthStateSigner("another-secret-key-base-of-32-chars-or-more").issue(),
        expired,
    ):
        response = _callback(live_webhook, code, bad)
        assert response.status_code == 400, (bad, response.text)  # type: ignore[attr-defined]
    assert _exchanges(live_webhook) == 0
    assert live_webhook.fingerprint() == before
    # The genuine state was not burnt by the failed attempts.
    assert _callback(live_webhook, code, state).status_code == 200  # type: ignore[attr-defined]
