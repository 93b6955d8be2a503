"""The config API: no token, no entry; guessing is slowed down; the right token still works."""

from __future__ import annotations

import json

from tests.fixtures.live_webhook import LiveWebhook, fresh_settings
from throttle_dev.localenv import PostgresServer, RedisServer

POLICY = {"name": "nightly", "portalId": 42, "rate": {"limit": 5, "period": "1m"}}

GUESSES = 30
"""More wrong tokens than any legitimate client sends; the limiter must have kicked in by then."""


def _put(live: LiveWebhook, headers: dict[str, str]) -> object:
    return live.http.put(
        live.url + "/api/config/42/policies/nightly",
        data=json.dumps(POLICY),
        headers={**headers, "Content-Type": "application/json"},
        timeout=30,
    )


def test_without_or_with_a_wrong_token_nothing_is_read_or_changed(
    live_webhook: LiveWebhook,
) -> None:
    before = live_webhook.fingerprint()
    token = live_webhook.bearer()["Authorization"]
    for headers in (
        {"Authorization": "Bearer " + "\u00e9" * 10},  # not UTF-8 on the wire (latin-1)
        {},
        {"Authorization": "Bearer"},
        {"Authorization": "Basic " + token.split()[1]},
        {"Authorization": token[:-1]},
        {"Authorization": token + "x"},
    ):
        response = _put(live_webhook, headers)
        assert response.status_code in (401, 429), (headers, response.text)  # type: ignore[attr-defined]
        listing = live_webhook.http.get(
            live_webhook.url + "/api/config", headers=headers, timeout=30
        )
        assert listing.status_code in (401, 429)
        assert "nightly" not in listing.text
    assert live_webhook.fingerprint() == before


def test_the_right_token_creates_and_lists(live_webhook: LiveWebhook) -> None:
    response = _put(live_webhook, live_webhook.bearer())
    assert response.status_code in (200, 201), response.text  # type: ignore[attr-defined]
    listing = live_webhook.http.get(
        live_webhook.url + "/api/config", headers=live_webhook.bearer(), timeout=30
    )
    assert [p["name"] for p in listing.json()["policies"]] == ["nightly"]


def test_failed_attempts_are_rate_limited(live_webhook: LiveWebhook) -> None:
    """A brute-force guesser gets 429 with Retry-After long before it could matter; the API
    keeps answering (no 5xx) and nothing changes while it is locked out."""
    before = live_webhook.fingerprint()
    statuses = []
    retry_after = None
    for i in range(GUESSES):
        response = _put(live_webhook, live_webhook.bearer(f"guess-{i:04d}-" + "x" * 30))
        statuses.append(response.status_code)  # type: ignore[attr-defined]
        if response.status_code == 429:  # type: ignore[attr-defined]
            retry_after = response.headers.get("Retry-After")  # type: ignore[attr-defined]
    assert set(statuses) <= {401, 429}, statuses
    assert 429 in statuses, f"{GUESSES} wrong tokens in a row were never refused with 429"
    first = statuses.index(429)
    assert all(s == 429 for s in statuses[first:]), statuses
    assert retry_after is not None
    assert int(retry_after) > 0
    assert live_webhook.fingerprint() == before


def test_a_flood_of_wrong_tokens_never_locks_the_right_token_out(
    live_webhook: LiveWebhook,
) -> None:
    """Behind an ingress (no TRUSTED_PROXIES) every client shares the ingress' address: a
    stranger's flood of wrong tokens must not refuse the operators' scripts."""
    for i in range(GUESSES):
        _put(live_webhook, live_webhook.bearer(f"stranger-{i:04d}-" + "x" * 30))
    assert _put(live_webhook, live_webhook.bearer("one-more-wrong")).status_code == 429  # type: ignore[attr-defined]
    response = _put(live_webhook, live_webhook.bearer())
    assert response.status_code in (200, 201), response.text  # type: ignore[attr-defined]
    assert _put(live_webhook, live_webhook.bearer("still-wrong")).status_code == 429  # type: ignore[attr-defined]


def test_behind_a_trusted_proxy_each_client_is_counted_apart(
    redis_server: RedisServer, postgres_server: PostgresServer
) -> None:
    """The client is the right-most untrusted X-Forwarded-For hop (the address our proxy saw),
    not the proxy; a flooder cannot lock out another client, nor dodge by writing hops of its own
    to the left."""
    live = LiveWebhook(
        fresh_settings(redis_server, postgres_server, trusted_proxies="127.0.0.0/8")
    ).start()
    try:
        for i in range(GUESSES):
            # The flooder writes a new left-most hop each time; the proxy appends its address.
            hops = {"X-Forwarded-For": f"192.0.2.{i % 250}, 203.0.113.66"}
            _put(live, {**live.bearer(f"guess-{i:04d}"), **hops})
        flooder = {"X-Forwarded-For": "203.0.113.66"}
        assert _put(live, {**live.bearer("again"), **flooder}).status_code == 429  # type: ignore[attr-defined]
        other = {"X-Forwarded-For": "198.51.100.7"}
        assert _put(live, {**live.bearer("typo"), **other}).status_code == 401  # type: ignore[attr-defined]
        assert "203.0.113.66" in live.log_text()
    finally:
        live.stop()
