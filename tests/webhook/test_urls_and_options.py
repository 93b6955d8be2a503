"""The URL a signature is checked against (public URL, trusted proxies), and the policy picker."""

from __future__ import annotations

import json
import time
from typing import Any

from hubspot.utils.signature import Signature

from tests.fixtures.webhook import PORTAL, StartWebhook, Webhook, execution, policy


async def test_signed_public_url_is_accepted_whatever_host_the_pod_sees(webhook: Webhook) -> None:
    await webhook.add_policy(policy())
    body = json.dumps(execution()).encode()
    # The test client connects to 127.0.0.1:<random port>; HubSpot signed PUBLIC_URL.
    headers = webhook.signed(body, url=webhook.url("/api/hubspot/action"))
    response = await webhook.client.post("/api/hubspot/action", data=body, headers=headers)
    assert response.status == 200


async def test_forwarded_headers_ignored_without_trust(webhook: Webhook) -> None:
    await webhook.add_policy(policy())
    body = json.dumps(execution()).encode()
    proxy_url = "https://throttle.example.com/api/hubspot/action"
    headers = {
        **webhook.signed(body, url=proxy_url),
        "X-Forwarded-Proto": "https",
        "X-Forwarded-Host": "throttle.example.com",
    }
    response = await webhook.client.post("/api/hubspot/action", data=body, headers=headers)
    # Not believed: the signature fits no URL this pod accepts. With no valid request seen yet
    # that is what a wrong PUBLIC_URL looks like, so the refusal is retryable, and queues nothing.
    assert response.status == 503
    assert (await response.json())["error"] == "secret_mismatch"
    assert await webhook.depth(policy()) == 0


async def test_forwarded_headers_used_from_a_trusted_proxy(start_webhook: StartWebhook) -> None:
    webhook = await start_webhook(trusted_proxies="127.0.0.0/8")
    await webhook.add_policy(policy())
    body = json.dumps(execution()).encode()
    proxy_url = "https://throttle.example.com/api/hubspot/action?b=2&a=1"
    ts = str(int(time.time() * 1000))
    headers = {
        # Signed by HubSpot's own SDK, as HubSpot would for the URL it called.
        "X-HubSpot-Signature-v3": Signature.get_signature(
            webhook.secret, body.decode(), "v3", proxy_url, "POST", ts
        ),
        "X-HubSpot-Request-Timestamp": ts,
        "X-Forwarded-Proto": "http, https",
        # The right-most value is the one our ingress appended; a client wrote the rest.
        "X-Forwarded-Host": "client-chose.example, throttle.example.com",
    }
    response = await webhook.client.post("/api/hubspot/action?b=2&a=1", data=body, headers=headers)
    assert response.status == 200
    # The PUBLIC_URL signature no longer fits once the proxy says where HubSpot called.
    headers = {
        **webhook.signed(body, url=webhook.url("/api/hubspot/action?b=2&a=1")),
        "X-Forwarded-Proto": "https",
        "X-Forwarded-Host": "throttle.example.com",
    }
    response = await webhook.client.post("/api/hubspot/action?b=2&a=1", data=body, headers=headers)
    assert response.status == 401


async def test_a_forwarded_host_the_client_wrote_is_not_believed(
    start_webhook: StartWebhook,
) -> None:
    """The left-most X-Forwarded-Host is whatever the client sent before our ingress appended
    its own: a signature made for that host must not pass."""
    webhook = await start_webhook(trusted_proxies="127.0.0.0/8")
    await webhook.add_policy(policy())
    # HubSpot's own requests come through first (with none seen yet, a signature that fits no
    # URL reads as a client secret changed at HubSpot: 503, retried), so the forgery is alone.
    ours = {"X-Forwarded-Proto": "https", "X-Forwarded-Host": "throttle.example.com"}
    for n in range(2):
        valid = json.dumps(execution(callback_id=f"valid-{n}")).encode()
        signed = webhook.signed(valid, url="https://throttle.example.com/api/hubspot/action")
        answer = await webhook.client.post(
            "/api/hubspot/action", data=valid, headers={**signed, **ours}
        )
        assert answer.status == 200, await answer.text()
    body = json.dumps(execution()).encode()
    forged = "https://elsewhere.example/api/hubspot/action"
    headers = {
        **webhook.signed(body, url=forged),
        "X-Forwarded-Proto": "https, https",
        "X-Forwarded-Host": "elsewhere.example, throttle.example.com",
    }
    response = await webhook.client.post("/api/hubspot/action", data=body, headers=headers)
    assert response.status == 401
    assert (await response.json())["error"] == "invalid_signature"


async def test_query_string_order_is_kept(webhook: Webhook) -> None:
    await webhook.add_policy(policy())
    body = json.dumps(execution()).encode()
    signed_url = webhook.url("/api/hubspot/action?z=1&a=2")
    ok = await webhook.client.post(
        "/api/hubspot/action?z=1&a=2", data=body, headers=webhook.signed(body, url=signed_url)
    )
    assert ok.status == 200
    reordered = await webhook.client.post(
        "/api/hubspot/action?a=2&z=1", data=body, headers=webhook.signed(body, url=signed_url)
    )
    assert reordered.status == 401


async def test_public_url_with_a_path_prefix(start_webhook: StartWebhook) -> None:
    webhook = await start_webhook(public_url="https://hooks.example.com/throttle")
    await webhook.add_policy(policy())
    body = json.dumps(execution()).encode()
    signed_url = "https://hooks.example.com/throttle/api/hubspot/action"
    response = await webhook.client.post(
        "/api/hubspot/action", data=body, headers=webhook.signed(body, url=signed_url)
    )
    assert response.status == 200


async def test_previous_secret_accepted_while_rotating(start_webhook: StartWebhook) -> None:
    webhook = await start_webhook(hubspot_client_secret_previous="the-old-secret-value")
    await webhook.add_policy(policy())
    status, _ = await webhook.post_action(execution(), secret="the-old-secret-value")
    assert status == 200
    status, _ = await webhook.post_action(execution("cb-2"), secret="never-was-a-secret")
    assert status == 401


async def test_v1_refused_unless_enabled(start_webhook: StartWebhook) -> None:
    from throttle.hubspot.signatures import sign_v1

    for allowed, expected in ((False, 401), (True, 200)):
        webhook = await start_webhook(allow_signature_v1=allowed)
        await webhook.add_policy(policy())
        body = json.dumps(execution()).encode()
        headers = {
            "X-HubSpot-Signature": sign_v1(webhook.secret, body),
            "X-HubSpot-Signature-Version": "v1",
        }
        response = await webhook.client.post("/api/hubspot/action", data=body, headers=headers)
        assert response.status == expected


async def test_stale_and_future_timestamps_refused(webhook: Webhook) -> None:
    import time

    await webhook.add_policy(policy())
    now = int(time.time() * 1000)
    for ts in (now - 6 * 60_000, now + 6 * 60_000):
        status, body = await webhook.post_action(execution(), timestamp_ms=ts)
        assert status == 401
        assert body["error"] == "invalid_signature"


async def test_non_ascii_body_verified_on_raw_bytes(webhook: Webhook) -> None:
    p = await webhook.add_policy(policy())
    raw = json.dumps(
        execution(
            object={"objectId": 1, "objectType": "CONTACT", "properties": {"name": "Zoë 東京"}}
        )
    ).encode()
    assert b"\\u" in raw  # escaped, as HubSpot sends it
    status, _ = await webhook.post_action(raw)
    assert status == 200
    literal = json.dumps(
        execution(
            "cb-2", object={"objectId": 1, "objectType": "CONTACT", "properties": {"name": "Zoë"}}
        ),
        ensure_ascii=False,
    ).encode()
    status, _ = await webhook.post_action(literal)
    assert status == 200
    assert await webhook.depth(p) == 2


# --- options -------------------------------------------------------------------------------------


def options_request(q: str | None = None, after: str | None = None) -> dict[str, Any]:
    fetch: dict[str, Any] = {}
    if q is not None:
        fetch["q"] = q
    if after is not None:
        fetch["after"] = after
    return {
        "origin": {"portalId": PORTAL, "actionDefinitionId": 1, "actionDefinitionVersion": 1},
        "inputFieldName": "policy",
        "inputFields": {},
        "fetchOptions": fetch,
    }


async def _options(webhook: Webhook, payload: dict[str, Any]) -> tuple[int, Any]:
    return await webhook.post_action(payload, path="/api/hubspot/options")


async def test_options_list_search_and_page(webhook: Webhook) -> None:
    from throttle.webhook_service.options import PAGE_SIZE

    names = [f"p{i:03d}" for i in range(PAGE_SIZE + 5)] + ["enrichment"]
    for name in names:
        await webhook.add_policy(policy(name))
    await webhook.add_policy(policy("other-portal", portal=PORTAL + 1))

    status, first = await _options(webhook, options_request())
    assert status == 200
    assert first["searchable"] is True
    assert len(first["options"]) == PAGE_SIZE
    assert first["options"][0] == {
        "label": "enrichment",
        "value": "enrichment",
        "description": "10 per PT1M, burst 1",
    }
    status, second = await _options(webhook, options_request(after=first["after"]))
    seen = [o["value"] for o in first["options"] + second["options"]]
    assert seen == sorted(names)
    assert "after" not in second

    status, found = await _options(webhook, options_request(q="ENRICH"))
    assert [o["value"] for o in found["options"]] == ["enrichment"]


async def test_options_needs_a_signature(webhook: Webhook) -> None:
    response = await webhook.client.post(
        "/api/hubspot/options", data=json.dumps(options_request()).encode()
    )
    assert response.status == 401
    status, body = await _options(webhook, {"origin": {}})
    assert status == 400
    assert body["field"] == "origin.portalId"
