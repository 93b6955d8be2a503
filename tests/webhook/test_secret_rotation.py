"""A client secret rotated at HubSpot before ours: retryable answers, never a failed action.

HubSpot fails an action answered 4xx (the workflow continues unthrottled) and retries a 5xx for
up to 3 days. These tests judge from HubSpot's side: the simulator's driver plays HubSpot's
workflow engine against the real webhook app (real Redis), signs with the secret HubSpot holds,
and records what HubSpot would make of every answer.
"""

from __future__ import annotations

import asyncio
import base64
import json
import secrets
import time
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from tests.fixtures.metric_samples import sample
from tests.fixtures.webhook import ServeWebhook, StartWebhook, execution, policy
from throttle.engine.registry import reconcile
from throttle.hubspot.signatures import sign_v3
from throttle.settings import Settings
from throttle.webhook_service.appkeys import METRICS, POLICY_INDEX, QUEUE
from throttle_dev.simulator import Driver, Simulator, SimulatorConfig, TrafficPlan

PORTAL = 1001
ACTION = 1


def _forged() -> str:
    """A well-formed v3 signature no configured secret makes (an attacker's, or HubSpot's
    made with a secret we do not hold)."""
    return base64.b64encode(secrets.token_bytes(32)).decode()


Serve = Callable[[Settings], Awaitable[web.Application]]


@pytest.fixture
def serve(redis: Any, serve_webhook: ServeWebhook) -> Serve:
    """Serve the webhook app with the portal's policy in force (serving again is a rollout)."""

    async def start(settings: Settings) -> web.Application:
        app = await serve_webhook(settings)
        await reconcile(app[QUEUE], policy("enrichment", portal=PORTAL, actionId=ACTION))
        await app[POLICY_INDEX].refresh()
        return app

    return start


def _plan(executions: int) -> TrafficPlan:
    return TrafficPlan(
        executions=executions,
        portals=[PORTAL],
        action_definition_id=ACTION,
        policy="enrichment",
        concurrency=4,
        max_attempts=10,
        retry_backoff_s=0.1,
    )


def _failed(sim: Simulator) -> list[str]:
    return [c.callback_id for c in sim.callbacks.values() if c.state == "failed"]


async def test_secret_rotated_only_at_hubspot_no_execution_passes_unthrottled(
    make_settings: Any, serve: Serve
) -> None:
    old, new = "old-secret-" + secrets.token_hex(8), "new-secret-" + secrets.token_hex(8)
    settings = make_settings(hubspot_client_secret=old, require_installed_portal=False)
    url = f"{settings.public_url}/api/hubspot/action"
    sim = Simulator(SimulatorConfig(client_secret=new))  # HubSpot signs with the new secret
    app = await serve(settings)

    async with aiohttp.ClientSession() as session, Driver(sim, url, session) as driver:
        run = asyncio.create_task(driver.run(_plan(12)))
        for _ in range(100):  # until every execution has been answered at least once
            if sum(c.deliveries for c in sim.callbacks.values()) >= 24:
                break
            await asyncio.sleep(0.05)
        assert not run.done()
        assert _failed(sim) == []  # HubSpot was told "retry", not "failed"
        metrics = app[METRICS]
        assert sample(metrics, "throttle_webhook_answers_total", answer="secret_mismatch") >= 12
        assert sample(metrics, "throttle_webhook_answers_total", answer="block") == 0

        # What HubSpot's retries hear: 503, the likely cause named, no secret.
        body = json.dumps(execution("ap-probe", portal=PORTAL)).encode()
        ts = int(time.time() * 1000)
        headers = {
            "X-HubSpot-Signature-v3": sign_v3(new, "POST", url, body, ts),
            "X-HubSpot-Request-Timestamp": str(ts),
            "Content-Type": "application/json",
        }
        async with session.post(url, data=body, headers=headers) as response:
            assert response.status == 503
            assert response.headers["Retry-After"]
            text = await response.text()
        answer = json.loads(text)
        assert answer["error"] == "secret_mismatch"
        assert "HUBSPOT_CLIENT_SECRET" in answer["detail"]
        assert old not in text
        assert new not in text

        # The secret is updated here (a rollout: the new one current, the old one previous).
        await serve(
            make_settings(
                hubspot_client_secret=new,
                hubspot_client_secret_previous=old,
                require_installed_portal=False,
            )
        )
        result = await run

    assert result.answers == {"BLOCK": 12}, result
    assert result.gave_up == 0
    assert _failed(sim) == []
    assert {c.state for c in sim.callbacks.values() if c.callback_id != "ap-probe"} == {"blocked"}


async def test_proper_rotation_with_the_previous_secret_fails_nothing(
    make_settings: Any, serve: Serve
) -> None:
    old, new = "old-secret-" + secrets.token_hex(8), "new-secret-" + secrets.token_hex(8)
    # Our side first: the new secret current, the old one still accepted.
    settings = make_settings(
        hubspot_client_secret=new,
        hubspot_client_secret_previous=old,
        require_installed_portal=False,
    )
    url = f"{settings.public_url}/api/hubspot/action"
    app = await serve(settings)
    sim = Simulator(SimulatorConfig(client_secret=old))
    async with Driver(sim, url) as driver:
        before = await driver.run(_plan(5))  # HubSpot still signs with the old one
    sim.config.client_secret = new
    async with Driver(sim, url) as driver:
        after = await driver.run(_plan(5))  # HubSpot switched
    assert before.answers == after.answers == {"BLOCK": 5}
    assert before.retries == after.retries == 0
    assert _failed(sim) == []
    metrics = app[METRICS]
    assert (
        sample(metrics, "throttle_webhook_signatures_total", version="v3", secret="previous") == 5
    )
    assert sample(metrics, "throttle_webhook_signatures_total", version="v3", secret="current") == 5
    assert sample(metrics, "throttle_webhook_answers_total", answer="secret_mismatch") == 0


async def test_a_forged_request_among_valid_ones_still_gets_401(
    start_webhook: StartWebhook,
) -> None:
    webhook = await start_webhook()
    await webhook.add_policy(policy())
    for n in range(3):
        status, _ = await webhook.post_action(execution(f"ap-valid-{n}"))
        assert status == 200
    body = json.dumps(execution("ap-forged")).encode()
    ts = int(time.time() * 1000)
    headers = {
        "X-HubSpot-Signature-v3": _forged(),
        "X-HubSpot-Request-Timestamp": str(ts),
        "Content-Type": "application/json",
    }
    response = await webhook.client.post("/api/hubspot/action", data=body, headers=headers)
    assert response.status == 401
    assert (await response.json())["error"] == "invalid_signature"


@pytest.mark.parametrize(
    ("signature", "age_ms"),
    [
        ("not-a-signature", 0),  # junk: never HubSpot's
        (base64.b64encode(b"x" * 16).decode(), 0),  # base64, but not an HMAC-SHA256
        (None, 6 * 60 * 1000),  # well formed, but stale: a replay, not a rotation
    ],
)
async def test_what_cannot_be_hubspots_gets_401_even_from_a_cold_start(
    start_webhook: StartWebhook, signature: str | None, age_ms: int
) -> None:
    webhook = await start_webhook()
    body = json.dumps(execution("ap-x")).encode()
    headers = {
        "X-HubSpot-Signature-v3": signature or _forged(),
        "X-HubSpot-Request-Timestamp": str(int(time.time() * 1000) - age_ms),
        "Content-Type": "application/json",
    }
    for _ in range(3):
        response = await webhook.client.post("/api/hubspot/action", data=body, headers=headers)
        assert response.status == 401


async def test_mismatches_outnumbering_valid_ones_turn_retryable(
    start_webhook: StartWebhook,
) -> None:
    """Mid-traffic, the rotation costs a bounded few 401s, then every answer is a 503."""
    webhook = await start_webhook()
    await webhook.add_policy(policy())
    for n in range(8):
        status, _ = await webhook.post_action(execution(f"ap-valid-{n}"))
        assert status == 200
    statuses = []
    for n in range(6):
        body = json.dumps(execution(f"ap-rotated-{n}")).encode()
        headers = webhook.signed(body, secret="rotated-at-hubspot")
        response = await webhook.client.post("/api/hubspot/action", data=body, headers=headers)
        statuses.append(response.status)
    assert statuses == [401, 401, 401, 401, 503, 503]
