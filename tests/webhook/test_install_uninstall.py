"""The install flow and the uninstall webhook mounted in the real webhook app (`create_app`),
and the webhook then refusing the uninstalled portal's executions."""

from __future__ import annotations

import json
import time
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import pytest

from tests.fixtures.hubspot_simulator import RunningSimulator, StartSimulator
from tests.fixtures.webhook import ServeWebhook
from throttle.webhook_service.appkeys import INSTALLED, TOKENS
from throttle_dev.simulator import Driver, TrafficPlan, send_uninstall


@pytest.fixture
async def webhook(
    start_simulator: StartSimulator,
    make_settings: Any,
    pool: Any,
    redis: Any,
    serve_webhook: ServeWebhook,
) -> tuple[RunningSimulator, str, Any]:
    settings = make_settings()
    running = await start_simulator(
        client_id=settings.hubspot_client_id,
        client_secret=settings.hubspot_client_secret.get_secret_value(),
    )
    settings = make_settings(hubspot_api_base=running.url, hubspot_app_base=running.url)
    app = await serve_webhook(settings)
    return running, settings.public_url, app


async def test_install_uninstall_through_the_webhook_app(
    webhook: tuple[RunningSimulator, str, Any],
) -> None:
    running, url, app = webhook
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as session:
        async with session.get(url + "/api/oauth/authorize", allow_redirects=False) as r:
            assert r.status == 302
            authorize = r.headers["Location"]
        async with session.get(authorize + "&portal_id=4242", allow_redirects=False) as r:
            callback = r.headers["Location"]
        assert urlsplit(callback).path == "/api/oauth/callback"
        async with session.get(callback) as r:
            assert r.status == 200, await r.text()
        installation = await app[TOKENS].store.installation(4242)
        assert installation.status == "installed"
        assert installation.hub_domain == "portal-4242.example.com"

        await app[INSTALLED].refresh()
        async with Driver(running.sim, url + "/api/hubspot/action", session) as driver:
            before = await driver.run(TrafficPlan(executions=1, portals=[4242]))
        assert set(before.answers) <= {"BLOCK", "FAIL_CONTINUE", "HTTP 404", "HTTP 422"}
        async with Driver(running.sim, url + "/api/hubspot/action", session) as driver:
            status, answer = await driver.fetch_options(url + "/api/hubspot/options", 4242)
            assert status == 200
            assert isinstance(answer["options"], list)
            driver.client_secret = "not-the-secret"
            status, _ = await driver.fetch_options(url + "/api/hubspot/options", 4242)
            assert status == 401

        status = await send_uninstall(running.sim, url + "/api/hubspot/uninstall", 4242, session)
        assert status == 200
        installation = await app[TOKENS].store.installation(4242)
        assert installation.status == "uninstalled"
        await app[INSTALLED].refresh()
        state = app[INSTALLED].state(4242)
        assert state is not None
        assert not state.installed
        assert "app uninstall webhook" in (state.reason or "")

        # A stale (6 min old) signature on the uninstall endpoint is refused like any other.
        body = json.dumps([{"subscriptionType": "app.uninstall", "portalId": 5}]).encode()
        from throttle.hubspot.signatures import sign_v3

        old = int(time.time() * 1000) - 6 * 60 * 1000
        headers = {
            "X-HubSpot-Signature-v3": sign_v3(
                running.sim.config.client_secret, "POST", url + "/api/hubspot/uninstall", body, old
            ),
            "X-HubSpot-Request-Timestamp": str(old),
            "Content-Type": "application/json",
        }
        async with session.post(url + "/api/hubspot/uninstall", data=body, headers=headers) as r:
            assert r.status == 401
            assert (await r.json())["error"] == "invalid_signature"
