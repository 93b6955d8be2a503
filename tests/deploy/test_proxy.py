"""The webhook behind a real reverse proxy (nginx, set up as ingress-nginx sets itself up).

Signature checks are where proxies break things: HubSpot signs the public https URL with its path
prefix and query string, and the pod sees neither the scheme, the host nor the prefix. Through
the proxy, HubSpot's v3-signed actions must verify, the OAuth install must come back to the
public callback URL, and the config API's failed-token limit must count each client, not the
proxy all clients arrive from.
"""

from __future__ import annotations

import http.client
import json
import ssl
import time
import uuid
from urllib.parse import parse_qs, urlsplit

from tests.fixtures.live_webhook import ACTION_PATH, PORTAL, dumps, execution
from tests.fixtures.reverse_proxy import ANNOUNCED_PREFIX, HOST, ProxiedWebhook
from throttle.hubspot.signatures import sign_v3

QUERY = "?next=a%3Ab%2Fc&x=1&x=2"
"""A query string HubSpot would sign: escapes it decodes for v3, a repeated key, order kept."""


def test_v3_signed_actions_verify_through_the_proxy(proxied_webhook: ProxiedWebhook) -> None:
    live = proxied_webhook.live
    live.add_policy()
    assert live.url.startswith("https://")
    assert live.url.endswith("/throttle")
    for path in (ACTION_PATH, ACTION_PATH + QUERY):
        body = dumps(execution(f"ap-{PORTAL}-{uuid.uuid4().int % 10**9}-7-0"))
        answer = live.post_signed(path, body)
        assert answer.status_code == 200, answer.text
        assert answer.json()["outputFields"]["hs_execution_state"] == "BLOCK"
    # The proxy really was in the way: both requests went through it, over TLS, prefix and all.
    assert proxied_webhook.proxy.access_log().count("POST /throttle/api/hubspot/action") == 2

    # A signature over the URL the pod sees (plain http, its own host, no prefix) is refused:
    # the check above is over the public URL, not whatever the request happens to carry.
    body = dumps(execution())
    inner = f"http://127.0.0.1:{live.settings.port}{ACTION_PATH}"
    now_ms = int(time.time() * 1000)
    headers = {
        "X-HubSpot-Signature-v3": sign_v3(
            live.settings.client_secrets[0], "POST", inner, body, now_ms
        ),
        "X-HubSpot-Request-Timestamp": str(now_ms),
        "Content-Type": "application/json",
    }
    refused = live.http.post(live.url + ACTION_PATH, data=body, headers=headers, timeout=30)
    assert refused.status_code == 401, refused.text
    assert refused.json()["error"] == "invalid_signature"


def test_a_prefix_the_proxy_announces_is_signed_too(proxied_webhook: ProxiedWebhook) -> None:
    """ingress-nginx's x-forwarded-prefix annotation: the header names the prefix, whatever
    PUBLIC_URL's path is (one webhook served under a second path)."""
    live = proxied_webhook.live
    live.add_policy()
    public = live.url
    live.url = proxied_webhook.public(ANNOUNCED_PREFIX)
    try:
        answer = live.post_signed(ACTION_PATH + QUERY, dumps(execution()))
    finally:
        live.url = public
    assert answer.status_code == 200, answer.text


def test_the_oauth_install_round_trips_through_the_proxy(proxied_webhook: ProxiedWebhook) -> None:
    live = proxied_webhook.live
    ours = live.http.get(live.url + "/api/oauth/authorize", allow_redirects=False, timeout=30)
    assert ours.status_code in (302, 303), ours.text
    redirect_uri = parse_qs(urlsplit(ours.headers["Location"]).query)["redirect_uri"][0]
    assert redirect_uri == live.url + "/api/oauth/callback"
    hubspot = live.http.get(
        ours.headers["Location"] + f"&portal_id={PORTAL}", allow_redirects=False, timeout=30
    )
    callback = hubspot.headers["Location"]
    assert callback.startswith(redirect_uri + "?")
    done = live.http.get(callback, headers={"Accept": "application/json"}, timeout=30)
    assert done.status_code == 200, done.text
    assert done.json()["status"] == "installed"
    assert live.sim.access_tokens, "HubSpot (the simulator) issued no token"


def _config_get(proxied: ProxiedWebhook, source: str, token: str, forwarded: str = "") -> int:
    """GET the config API through the proxy from `source` (a loopback address of the client)."""
    context = ssl.create_default_context(cafile=str(proxied.ca))
    conn = http.client.HTTPSConnection(
        HOST, proxied.proxy.port, context=context, timeout=30, source_address=(source, 0)
    )
    headers = {"Authorization": f"Bearer {token}"}
    if forwarded:
        headers["X-Forwarded-For"] = forwarded
    try:
        conn.request("GET", "/throttle/api/config", headers=headers)
        response = conn.getresponse()
        json.loads(response.read() or b"{}")
        return response.status
    finally:
        conn.close()


def test_the_failed_token_limit_sees_the_client_not_the_proxy(
    proxied_webhook: ProxiedWebhook,
) -> None:
    live = proxied_webhook.live
    token = live.settings.throttle_api_token
    assert token is not None
    limit = live.settings.config_api_max_failures
    guesser, neighbour = "127.0.0.1", "127.0.0.3"
    assert [_config_get(proxied_webhook, guesser, "wrong") for _ in range(limit)] == [401] * limit
    # Its guesses are locked out, and a forged X-Forwarded-For does not help: the proxy replaces
    # it. (The right token is always served: a lock-out never shuts an operator out.)
    assert _config_get(proxied_webhook, guesser, "wrong") == 429
    assert _config_get(proxied_webhook, guesser, "wrong", forwarded="10.9.8.7") == 429
    assert _config_get(proxied_webhook, guesser, token.get_secret_value()) == 200
    # Another client behind the same proxy is counted apart: its first mistake is its own (401,
    # not the guesser's 429).
    assert _config_get(proxied_webhook, neighbour, "typo") == 401
    assert _config_get(proxied_webhook, neighbour, token.get_secret_value()) == 200
    assert f"wrong or missing token from {guesser}" in live.log_text()
