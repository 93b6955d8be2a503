"""Health, readiness, metrics, the access log, and what happens when Redis is unreachable."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from aiohttp import web
from aiohttp.test_utils import make_mocked_request
from prometheus_client import CollectorRegistry

from tests.fixtures.webhook import PORTAL, StartWebhook, Webhook, execution, policy
from throttle.metrics import Metrics
from throttle.webhook_service.app import AccessLogger
from throttle.webhook_service.appkeys import POLICY_INDEX, QUEUE, REDIS
from throttle_dev.localenv import RedisServer, free_port


async def test_healthz_and_readyz(webhook: Webhook) -> None:
    health = await webhook.client.get("/healthz")
    assert health.status == 200
    assert await health.json() == {"status": "ok"}
    ready = await webhook.client.get("/readyz")
    assert ready.status == 200
    assert await ready.json() == {
        "status": "ready",
        "checks": {"redis": "ok", "scripts": "ok", "layout": "ok", "policies": "ok"},
        "faults": {},
    }


async def test_readyz_names_a_config_fault_some_pod_met_and_stays_ready(webhook: Webhook) -> None:
    """A dispatcher met HubSpot refusing the app's client secret: every webhook pod's /readyz
    names it (no secret in it) without failing readiness — the pod still queues correctly."""
    from throttle.hubspot.client import ConfigFault
    from throttle.hubspot.config_fault import ConfigFaultMonitor

    dispatcher_side = ConfigFaultMonitor(webhook.app[REDIS])
    await dispatcher_side.report(ConfigFault("client_credentials", 400, "BAD_CLIENT_SECRET"), 7)
    ready = await webhook.client.get("/readyz")
    assert ready.status == 200
    body = await ready.json()
    assert body["status"] == "ready"
    detail = body["faults"]["hubspot_config"]
    assert "refuses the app's client id or secret (HTTP 400 BAD_CLIENT_SECRET)" in detail
    assert "check HUBSPOT_CLIENT_ID and HUBSPOT_CLIENT_SECRET" in detail
    assert "portals stay installed" in detail
    assert webhook.secret not in detail
    await ConfigFaultMonitor(webhook.app[REDIS]).clear()  # any pod's success clears it
    assert (await (await webhook.client.get("/readyz")).json())["faults"] == {}


async def test_the_webhook_migrates_the_layout_before_it_is_ready(webhook: Webhook) -> None:
    """Started, it stamped Redis' layout; when Redis loses it (data of a release before the
    key, or Redis down at start) readiness fails until the layout is current again."""
    from throttle.engine import keys
    from throttle.engine.layout import CURRENT_LAYOUT, read_layout

    redis = webhook.app[REDIS]
    assert (await read_layout(redis)).version == CURRENT_LAYOUT
    await redis.delete(keys.LAYOUT)
    first = await webhook.client.get("/readyz")
    assert first.status == 503
    assert (await first.json())["checks"]["layout"] == "migrating"
    assert (await read_layout(redis)).stamped
    assert (await webhook.client.get("/readyz")).status == 200


async def test_readyz_reloads_scripts_after_a_flush(webhook: Webhook) -> None:
    await webhook.app[QUEUE].redis.script_flush()
    first = await webhook.client.get("/readyz")
    assert first.status == 503
    assert (await first.json())["checks"]["scripts"] == "loading"
    second = await webhook.client.get("/readyz")
    assert second.status == 200


async def test_metrics_count_answers_and_rejections(webhook: Webhook) -> None:
    await webhook.add_policy(policy())
    await webhook.post_action(execution("cb-1"))
    await webhook.post_action(execution("cb-1"))
    await webhook.client.post("/api/hubspot/action", data=b"{}")
    response = await webhook.client.get("/metrics")
    assert response.status == 200
    assert response.content_type == "text/plain"
    text = await response.text()
    assert 'throttle_webhook_answers_total{answer="block"} 1.0' in text
    assert 'throttle_webhook_answers_total{answer="duplicate"} 1.0' in text
    assert 'throttle_webhook_rejected_total{endpoint="action",reason="signature"} 1.0' in text
    assert 'throttle_webhook_signatures_total{secret="current",version="v3"} 2.0' in text
    assert "throttle_webhook_action_duration_seconds_count 2.0" in text


async def test_redis_unreachable_is_503_for_hubspot_to_retry(start_webhook: StartWebhook) -> None:
    webhook = await start_webhook(redis_url=f"redis://127.0.0.1:{free_port()}/0")
    assert (await webhook.client.get("/healthz")).status == 200
    ready = await webhook.client.get("/readyz")
    assert ready.status == 503
    assert (await ready.json())["checks"]["redis"].startswith("unreachable")
    # No policy could be loaded either: "no policy" would wave executions through; retry instead.
    status, body = await webhook.post_action(execution())
    assert status == 503
    assert body["error"] == "unavailable"


async def test_redis_down_after_policies_loaded_is_503(
    start_webhook: StartWebhook, tmp_path: Path
) -> None:
    own = RedisServer(tmp_path / "redis").start()
    try:
        webhook = await start_webhook(redis_url=own.url)
        await webhook.add_policy(policy())
        assert webhook.app[POLICY_INDEX].revision >= 0
        own.stop()
        status, body = await webhook.post_action(execution())
        assert status == 503
        assert body["error"] == "unavailable"
        assert (await webhook.client.get("/readyz")).status == 503
        metrics = await (await webhook.client.get("/metrics")).text()
        assert 'throttle_webhook_answers_total{answer="unavailable"} 1.0' in metrics
    finally:
        own.stop()


def test_access_log_has_no_query_string_or_headers(caplog: pytest.LogCaptureFixture) -> None:
    request = make_mocked_request(
        "GET",
        "/api/oauth/callback?code=secret-code&state=abc",
        headers={"Authorization": "Bearer top-secret", "X-HubSpot-Signature-v3": "sig"},
    )
    logger = logging.getLogger("throttle.access.test")
    with caplog.at_level(logging.INFO, logger=logger.name):
        AccessLogger(logger, "").log(request, web.Response(status=302), 0.0123)
    [record] = caplog.records
    assert record.getMessage() == "GET /api/oauth/callback 302 12.3ms"
    text = str(record.__dict__)
    for secret in ("secret-code", "state=abc", "top-secret", "sig"):
        assert secret not in text.replace("signature", "")


def test_default_access_log_keeps_only_problems(caplog: pytest.LogCaptureFixture) -> None:
    from throttle.webhook_service.app import ErrorAccessLogger

    logger = logging.getLogger("throttle.access.errors-test")
    access = ErrorAccessLogger(logger, "")
    request = make_mocked_request("POST", "/api/hubspot/action")
    with caplog.at_level(logging.INFO, logger=logger.name):
        access.log(request, web.Response(status=200), 0.002)
        access.log(request, web.Response(status=401), 0.002)
        access.log(request, web.Response(status=200), 1.5)
    assert [r.getMessage() for r in caplog.records] == [
        "POST /api/hubspot/action 401 2.0ms",
        "POST /api/hubspot/action 200 1500.0ms",
    ]


@pytest.mark.parametrize(
    ("given", "mode"), [("true", "all"), ("false", "off"), ("errors", "errors"), (True, "all")]
)
def test_access_log_setting_accepts_the_old_booleans(given: object, mode: str) -> None:
    from throttle.settings import Settings

    assert Settings(_env_file=None, webhook_access_log=given).webhook_access_log == mode  # type: ignore[call-arg]


async def test_actions_need_no_postgres(start_webhook: StartWebhook) -> None:
    """The hot path never touches PostgreSQL: with the database unreachable, actions queue."""
    dead = f"postgresql://postgres@127.0.0.1:{free_port()}/nowhere"
    webhook = await start_webhook(database_url=dead, require_installed_portal=True)
    p = await webhook.add_policy(policy())
    await webhook.install(PORTAL)  # known from the Redis mirror, as after a cold start
    status, body = await webhook.post_action(execution())
    assert status == 200
    assert body["outputFields"]["hs_execution_state"] == "BLOCK"
    assert await webhook.depth(p) == 1
    assert (await webhook.client.get("/readyz")).status == 200


def test_the_action_tally_exports_what_a_counter_and_a_histogram_would() -> None:
    registry = CollectorRegistry()
    tally = Metrics(registry).webhook_actions
    for seconds in (0.0004, 0.0005, 0.0015, 0.3, 2.0):
        tally.observe(seconds)
    tally.answered("block")
    tally.answered("block")
    tally.signed("v3", "previous")
    value = registry.get_sample_value
    name = "throttle_webhook_action_duration_seconds"
    assert value(f"{name}_bucket", {"le": "0.0005"}) == 2  # a bucket counts values <= its bound
    assert value(f"{name}_bucket", {"le": "0.002"}) == 3
    assert value(f"{name}_bucket", {"le": "1.0"}) == 4
    assert value(f"{name}_bucket", {"le": "+Inf"}) == 5
    assert value(f"{name}_count") == 5
    assert value(f"{name}_sum") == pytest.approx(2.3024)
    assert value("throttle_webhook_answers_total", {"answer": "block"}) == 2
    assert value("throttle_webhook_signatures_total", {"secret": "previous", "version": "v3"}) == 1
