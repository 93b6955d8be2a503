"""The install flow's `state`: issued by us, used once, never forged, never stale.

A replayed callback URL (browser history, a proxy log, a shared link) must store nothing: the
state is claimed before the code is exchanged, so the second use is refused without a call to
HubSpot and without touching the token table.
"""

from __future__ import annotations

import time
from urllib.parse import parse_qs, urlsplit

import requests

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
    nonce, expires, binding, signature = state.split(".")
    expired = OAuthStateSigner(secret.get_secret_value()).issue(now=time.time() - 3600).state
    for bad in (
        "",
        "not-a-state",
        f"{nonce}.{int(expires) + 3600}.{binding}.{signature}",
        f"{nonce}x.{expires}.{binding}.{signature}",
        OAuthStateSigner("another-secret-key-base-of-32-chars-or-more").issue().state,
        expired,
        state + "\u00e9",  # non-ASCII: once a 500 with a traceback
        f"{nonce}.{expires}.{binding}.{signature[:-1]}\u00e9",
    ):
        response = _callback(live_webhook, code, bad)
        assert response.status_code == 400, (bad, response.text)  # type: ignore[attr-defined]
    assert _exchanges(live_webhook) == 0
    assert live_webhook.fingerprint() == before
    assert "Traceback" not in live_webhook.log_text()
    # The genuine state was not burnt by the failed attempts.
    assert _callback(live_webhook, code, state).status_code == 200  # type: ignore[attr-defined]


def test_a_callback_from_another_browser_is_refused(live_webhook: LiveWebhook) -> None:
    """An attacker starts an install for their own portal and sends the callback link (code and
    a valid state) to an admin: the admin's browser lacks the install cookie, so nothing is
    stored. The browser that started it still can."""
    code, state = _authorize(live_webhook)
    cookie = live_webhook.http.cookies.get("throttle_install")
    assert cookie
    before = live_webhook.fingerprint()
    with requests.Session() as victim:

        def follow_link() -> requests.Response:
            """The victim opens the callback link the attacker sent."""
            return victim.get(
                live_webhook.url + "/api/oauth/callback",
                params={"code": code, "state": state},
                headers={"Accept": "application/json"},
                timeout=30,
            )

        response = follow_link()
        assert response.status_code == 400, response.text
        assert "cookie is missing" in response.json()["detail"]
        victim.cookies.set("throttle_install", "a-cookie-of-another-install")
        response = follow_link()
        assert response.status_code == 400, response.text
        assert "another browser" in response.json()["detail"]
    assert _exchanges(live_webhook) == 0
    assert live_webhook.fingerprint() == before
    assert _callback(live_webhook, code, state).status_code == 200  # type: ignore[attr-defined]


def test_the_install_cookie_is_http_only_lax_and_limited_to_the_callback(
    live_webhook: LiveWebhook,
) -> None:
    ours = live_webhook.http.get(
        live_webhook.url + "/api/oauth/authorize", allow_redirects=False, timeout=30
    )
    header = ours.headers["Set-Cookie"]
    assert header.startswith("throttle_install=")
    attributes = {part.strip().split("=")[0].lower() for part in header.split(";")}
    assert {"httponly", "samesite", "path", "max-age"} <= attributes
    assert "SameSite=Lax" in header
    assert "Path=/api/oauth/callback" in header
    assert "secure" not in attributes  # PUBLIC_URL is http:// here (https sets Secure)
