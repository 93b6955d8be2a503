"""The config API in local mode: PostgreSQL store + reconcile, bearer auth, JSON errors."""

from __future__ import annotations

from typing import Any

import pytest

from tests.fixtures.webhook import PORTAL, StartWebhook, Webhook, execution
from throttle.engine import keys
from throttle.history.migrations import migrate
from throttle.webhook_service.appkeys import CONFIG_STORE, POLICY_INDEX, QUEUE


@pytest.fixture
async def api(start_webhook: StartWebhook, database_url: str) -> Webhook:
    await migrate(database_url)
    # Tests here send many wrong tokens on purpose; the failed-attempt limiter (429 after
    # CONFIG_API_MAX_FAILURES, tested in tests/security) must not step in.
    return await start_webhook(config_api_max_failures=1000)


def auth(webhook: Webhook, token: str | None = None) -> dict[str, str]:
    assert webhook.settings.throttle_api_token is not None
    return {
        "Authorization": f"Bearer {token or webhook.settings.throttle_api_token.get_secret_value()}"
    }


SPEC: dict[str, Any] = {
    "portalId": PORTAL,
    "actionId": 10646377,
    "rate": {"limit": 100, "period": "1m", "burst": 10},
    "expiration": "P1D",
}


async def _registry(webhook: Webhook) -> dict[bytes, bytes]:
    result: dict[bytes, bytes] = await webhook.app[QUEUE].redis.hgetall(keys.REGISTRY)
    return result


async def test_missing_or_wrong_token_is_401_and_changes_nothing(api: Webhook) -> None:
    client = api.client
    attempts = [
        {},
        {"Authorization": "Bearer wrong-token"},
        {"Authorization": "Basic dXNlcjpwYXNz"},
        {"Authorization": "Bearer"},
    ]
    for headers in attempts:
        for method, path in (
            ("POST", "/api/config"),
            ("PUT", f"/api/config/{PORTAL}/default"),
            ("PUT", f"/api/config/{PORTAL}/policies/x"),
            ("DELETE", f"/api/config/{PORTAL}/10646377"),
            ("GET", "/api/config"),
            ("GET", f"/api/config/{PORTAL}/10646377"),
        ):
            response = await client.request(method, path, json=SPEC, headers=headers)
            assert response.status == 401, (method, path, headers)
            body = await response.json()
            assert body["error"] == "unauthorized"
            assert response.headers["WWW-Authenticate"].startswith("Bearer")
            token = api.settings.throttle_api_token
            assert token is not None
            assert token.get_secret_value() not in await response.text()
    assert await api.app[CONFIG_STORE].list() == []
    assert await _registry(api) == {}


async def test_create_replace_get_list_delete(api: Webhook) -> None:
    client, headers = api.client, auth(api)
    created = await client.post("/api/config", json=SPEC, headers=headers)
    assert created.status == 201
    body = await created.json()
    assert body["name"] == "action-10646377"
    assert body["rate"] == {"limit": 100, "period": "PT1M", "burst": 10}

    replaced = await client.post(
        "/api/config", json={**SPEC, "rate": {"limit": 5, "period": "1m"}}, headers=headers
    )
    assert replaced.status == 200
    got = await client.get(f"/api/config/{PORTAL}/10646377", headers=headers)
    assert (await got.json())["rate"]["limit"] == 5

    # Applied through reconcile: the registry holds it and the webhook routes actions to it.
    assert f"{PORTAL}:action-10646377".encode() in await _registry(api)
    await api.app[POLICY_INDEX].refresh()
    _, answer = await api.post_action(execution(inputFields={}))
    assert answer["outputFields"] == {
        "hs_execution_state": "BLOCK",
        "hs_expiration_duration": "P1D",
    }

    listed = await client.get(f"/api/config?portalId={PORTAL}", headers=headers)
    assert [p["name"] for p in (await listed.json())["policies"]] == ["action-10646377"]
    other = await client.get("/api/config?portalId=1", headers=headers)
    assert (await other.json())["policies"] == []

    deleted = await client.delete(f"/api/config/{PORTAL}/10646377", headers=headers)
    assert deleted.status == 204
    missing = await client.get(f"/api/config/{PORTAL}/10646377", headers=headers)
    assert missing.status == 404
    assert (await missing.json())["error"] == "not_found"
    assert f"{PORTAL}:action-10646377".encode() not in await _registry(api)


async def test_portal_default_and_named_policies(api: Webhook) -> None:
    client, headers = api.client, auth(api)
    spec = {"rate": {"limit": 3, "period": "10s"}}
    put = await client.put(f"/api/config/{PORTAL}/default", json=spec, headers=headers)
    assert put.status == 201
    got = await client.get(f"/api/config/{PORTAL}/default", headers=headers)
    assert (await got.json())["name"] == "default"
    named = await client.put(
        f"/api/config/{PORTAL}/policies/enrichment", json=spec, headers=headers
    )
    assert named.status == 201
    assert (await named.json())["portalId"] == PORTAL
    mismatch = await client.put(
        f"/api/config/{PORTAL}/policies/enrichment", json={**spec, "name": "other"}, headers=headers
    )
    assert mismatch.status == 400
    assert (await mismatch.json())["field"] == "name"
    with_action = await client.put(
        f"/api/config/{PORTAL}/default", json={**spec, "actionId": 5}, headers=headers
    )
    assert with_action.status == 400
    assert (await with_action.json())["field"] == "actionId"
    gone = await client.delete(f"/api/config/{PORTAL}/policies/enrichment", headers=headers)
    assert gone.status == 204
    again = await client.delete(f"/api/config/{PORTAL}/policies/enrichment", headers=headers)
    assert again.status == 404


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({**SPEC, "rate": {"limit": 0}}, "rate.limit"),
        ({**SPEC, "rate": {"limit": 5, "burst": 10}}, "rate.burst"),
        ({**SPEC, "expiration": "forever"}, "expiration"),
        ({**SPEC, "overflow": "Explode"}, "overflow"),
        ({**SPEC, "schedule": {"timeZone": "Mars/Base", "windows": []}}, "schedule.timeZone"),
        ({k: v for k, v in SPEC.items() if k != "rate"}, "rate"),
        ({**SPEC, "portalId": "x"}, "portalId"),
        ({**SPEC, "name": "Not A Name"}, "name"),
        ({**SPEC, "surprise": 1}, "surprise"),
        ([1, 2], "body"),
        # Beyond what a timedelta holds: once an OverflowError and a 500 (issue 15, fuzzing).
        ({**SPEC, "expiration": 1e308}, "expiration"),
        ({**SPEC, "expiration": "P9999999999D"}, "expiration"),
        ({**SPEC, "rate": {"limit": 5, "period": 1e308}}, "rate.period"),
        ({**SPEC, "rate": {"limit": 5, "period": "99999999999999w"}}, "rate.period"),
        # A zero-length period, in each spelling the CRD's pattern accepts.
        ({**SPEC, "rate": {"limit": 5, "period": "0s"}}, "rate.period"),
        ({**SPEC, "rate": {"limit": 5, "period": "PT0S"}}, "rate.period"),
        ({**SPEC, "rate": {"limit": 5, "period": "P0D"}}, "rate.period"),
    ],
)
async def test_invalid_policy_is_400_naming_the_field(api: Webhook, body: Any, field: str) -> None:
    response = await api.client.post("/api/config", json=body, headers=auth(api))
    assert response.status == 400
    answer = await response.json()
    assert answer["error"] == "invalid_policy"
    assert answer["field"] == field, answer
    assert await api.app[CONFIG_STORE].list() == []


async def test_invalid_json_and_bad_query(api: Webhook) -> None:
    response = await api.client.post("/api/config", data=b"{nope", headers=auth(api))
    assert response.status == 400
    assert (await response.json())["error"] == "invalid_json"
    response = await api.client.get("/api/config?portalId=abc", headers=auth(api))
    assert response.status == 400
    assert (await response.json())["field"] == "portalId"


async def test_second_policy_for_one_action_is_a_conflict(api: Webhook) -> None:
    headers = auth(api)
    first = await api.client.post("/api/config", json={**SPEC, "name": "a"}, headers=headers)
    assert first.status == 201
    second = await api.client.post("/api/config", json={**SPEC, "name": "b"}, headers=headers)
    assert second.status == 409
    assert (await second.json())["field"] == "actionId"
    assert [p.name for p in await api.app[CONFIG_STORE].list()] == ["a"]


async def test_unmigrated_database_is_503_not_500(start_webhook: StartWebhook) -> None:
    webhook = await start_webhook()
    response = await webhook.client.post("/api/config", json=SPEC, headers=auth(webhook))
    assert response.status == 503
    body = await response.json()
    assert body["error"] == "store_unavailable"
    assert "throttle migrate" in body["detail"]


async def test_redis_copy_restored_by_resync(api: Webhook) -> None:
    created = await api.client.post("/api/config", json=SPEC, headers=auth(api))
    assert created.status == 201
    await api.app[QUEUE].redis.flushall()
    assert await _registry(api) == {}
    store = api.app[CONFIG_STORE]
    assert await store.resync() == 1  # type: ignore[attr-defined]
    assert f"{PORTAL}:action-10646377".encode() in await _registry(api)


async def test_a_default_policy_cannot_name_an_action(api: Webhook) -> None:
    body = {**SPEC, "name": "default"}
    response = await api.client.post("/api/config", json=body, headers=auth(api))
    assert response.status == 400
    assert (await response.json())["field"] == "actionId"
    assert await api.app[CONFIG_STORE].list() == []
