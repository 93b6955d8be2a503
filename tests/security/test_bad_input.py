"""Oversized, over-nested, tampered, stale and replayed requests: refused or harmless, never stored.

Each refusal is checked two ways: the answer (status and JSON error shape) and a fingerprint of
every Redis key and PostgreSQL row taken before and after — a refusal that wrote something would
still be a hole, whatever it answered.
"""

from __future__ import annotations

import json
import time

from tests.fixtures.live_webhook import (
    ACTION_PATH,
    OPTIONS_PATH,
    LiveWebhook,
    dumps,
    execution,
)


def _is_error(response: object) -> dict[str, object]:
    body = response.json()  # type: ignore[attr-defined]
    assert set(body) >= {"error", "detail"}, body
    return body  # type: ignore[no-any-return]


def test_a_body_over_the_size_limit_is_413_and_stores_nothing(live_webhook: LiveWebhook) -> None:
    live_webhook.add_policy()
    before = live_webhook.fingerprint()
    limit = live_webhook.settings.webhook_max_body_bytes
    payload = execution(inputFields={"policy": "enrichment", "pad": "x" * (limit + 10)})
    body = dumps(payload)
    assert len(body) > limit
    for path in (ACTION_PATH, OPTIONS_PATH):
        response = live_webhook.post_signed(path, body)
        assert response.status_code == 413, (path, response.text)
        _is_error(response)
    response = live_webhook.http.post(
        live_webhook.url + "/api/config",
        data=body,
        headers={**live_webhook.bearer(), "Content-Type": "application/json"},
        timeout=30,
    )
    assert response.status_code == 413, response.text
    _is_error(response)
    assert live_webhook.fingerprint() == before


def test_json_nested_past_the_depth_limit_is_400_and_stores_nothing(
    live_webhook: LiveWebhook,
) -> None:
    live_webhook.add_policy()
    before = live_webhook.fingerprint()
    deep: object = "leaf"
    for _ in range(200):
        deep = {"a": [deep]}
    for path in (ACTION_PATH, OPTIONS_PATH):
        body = dumps(execution(inputFields={"policy": "enrichment", "nested": deep}))
        response = live_webhook.post_signed(path, body)
        assert response.status_code == 400, (path, response.text)
        assert _is_error(response)["error"] == "invalid_json"
    token = live_webhook.bearer()
    response = live_webhook.http.post(
        live_webhook.url + "/api/config",
        data=json.dumps({"name": "x", "portalId": 1, "deep": deep}),
        headers={**token, "Content-Type": "application/json"},
        timeout=30,
    )
    assert response.status_code == 400, response.text
    assert live_webhook.fingerprint() == before


def test_a_replayed_signed_request_inside_the_window_is_harmless(
    live_webhook: LiveWebhook,
) -> None:
    """HubSpot retries with the same callbackId, and an attacker can replay captured bytes for
    the 5 minutes the timestamp is valid: both get the same BLOCK and nothing is queued twice."""
    live_webhook.add_policy()
    body = dumps(execution())
    headers = live_webhook.signed(body)
    first = live_webhook.http.post(live_webhook.url + ACTION_PATH, data=body, headers=headers)
    assert first.status_code == 200, first.text
    assert first.json()["outputFields"]["hs_execution_state"] == "BLOCK"
    after_first = live_webhook.fingerprint()
    for _ in range(5):
        again = live_webhook.http.post(live_webhook.url + ACTION_PATH, data=body, headers=headers)
        assert again.status_code == 200
        assert again.json() == first.json()
    assert live_webhook.fingerprint() == after_first


def test_a_stale_or_future_timestamp_is_refused(live_webhook: LiveWebhook) -> None:
    live_webhook.add_policy()
    before = live_webhook.fingerprint()
    body = dumps(execution())
    now = int(time.time() * 1000)
    for skew_ms in (-6 * 60 * 1000, 6 * 60 * 1000):
        response = live_webhook.post_signed(ACTION_PATH, body, timestamp_ms=now + skew_ms)
        assert response.status_code == 401, response.text
        assert _is_error(response)["error"] == "invalid_signature"
    assert live_webhook.fingerprint() == before


def test_a_tampered_body_or_foreign_secret_is_refused(live_webhook: LiveWebhook) -> None:
    live_webhook.add_policy()
    before = live_webhook.fingerprint()
    body = dumps(execution())
    headers = live_webhook.signed(body)
    tampered = body.replace(b"904", b"905")
    response = live_webhook.http.post(
        live_webhook.url + ACTION_PATH, data=tampered, headers=headers
    )
    # No valid request seen yet: a well-formed, fresh signature that fits nothing is what a
    # client secret changed at HubSpot looks like, so the refusal is retryable (503).
    assert response.status_code == 503
    assert _is_error(response)["error"] == "secret_mismatch"
    assert live_webhook.fingerprint() == before
    for _ in range(2):  # HubSpot's valid requests now outnumber the mismatches
        valid = live_webhook.post_signed(ACTION_PATH, dumps(execution()))
        assert valid.status_code == 200
    before = live_webhook.fingerprint()
    response = live_webhook.http.post(
        live_webhook.url + ACTION_PATH, data=tampered, headers=headers
    )
    assert response.status_code == 401  # among valid requests: a forgery
    unsigned = live_webhook.http.post(
        live_webhook.url + ACTION_PATH, data=body, headers={"Content-Type": "application/json"}
    )
    assert unsigned.status_code == 401
    v1_only = live_webhook.http.post(
        live_webhook.url + ACTION_PATH,
        data=body,
        headers={"X-HubSpot-Signature": "0" * 64, "X-HubSpot-Signature-Version": "v1"},
    )
    assert v1_only.status_code == 401
    assert live_webhook.fingerprint() == before


def test_an_unknown_path_or_method_gets_a_json_404_or_405(live_webhook: LiveWebhook) -> None:
    before = live_webhook.fingerprint()
    missing = live_webhook.http.post(live_webhook.url + "/api/hubspot/nothing", data=b"{}")
    assert missing.status_code == 404
    assert _is_error(missing)["error"] == "not_found"
    wrong = live_webhook.http.get(live_webhook.url + ACTION_PATH)
    assert wrong.status_code == 405
    assert _is_error(wrong)["error"] == "method_not_allowed"
    assert wrong.headers["Allow"] == "POST"
    config = live_webhook.http.patch(
        live_webhook.url + "/api/config", headers=live_webhook.bearer()
    )
    assert config.status_code == 405
    assert set(config.headers["Allow"].split(",")) >= {"GET", "POST"}
    assert live_webhook.fingerprint() == before
