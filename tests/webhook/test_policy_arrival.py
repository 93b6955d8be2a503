"""A policy that exists is in force on every pod from the next request: "no policy" is only
ever the registry's answer, never a pod that has not reloaded yet; and the pod that ran a
portal's OAuth callback knows the portal at once."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestServer
from prometheus_client import CollectorRegistry

from tests.fixtures.hubspot_simulator import StartSimulator
from tests.fixtures.webhook import (
    ACTION_DEF,
    ACTION_PATH,
    PORTAL,
    StartWebhook,
    Webhook,
    execution,
    policy,
)
from throttle.engine import keys
from throttle.engine.policy_index import registry_put
from throttle.engine.registry import reconcile
from throttle.history.migrations import migrate
from throttle.hubspot.signatures import sign_v3
from throttle.webhook_service.app import create_app
from throttle.webhook_service.appkeys import INSTALLED, POLICY_INDEX, QUEUE
from throttle_dev.demo.install import install_portal


async def _loaded(webhook: Webhook) -> None:
    """The pod has loaded the registry once (its periodic reload is 2 s away)."""
    await webhook.app[POLICY_INDEX].refresh()
    assert webhook.app[POLICY_INDEX].revision >= 0


async def test_a_policy_written_by_another_pod_holds_the_very_next_execution(
    webhook: Webhook,
) -> None:
    await _loaded(webhook)
    # Another pod's config API (or the operator) writes it; this pod's index does not know it.
    named = policy(expiration="P2D")
    await reconcile(webhook.app[QUEUE], named)
    assert webhook.app[POLICY_INDEX].get(PORTAL, "enrichment") is None

    status, body = await webhook.post_action(execution("cb-named"))
    assert status == 200
    assert body == {
        "outputFields": {"hs_execution_state": "BLOCK", "hs_expiration_duration": "P2D"}
    }
    assert await webhook.depth(named) == 1

    # No name in the input fields, and the portal's default arrives the same way.
    default = policy("default", expiration="PT12H")
    await reconcile(webhook.app[QUEUE], default)
    status, body = await webhook.post_action(execution("cb-default", inputFields={}))
    assert body["outputFields"]["hs_expiration_duration"] == "PT12H"
    assert await webhook.depth(default) == 1


async def test_a_named_policy_not_loaded_yet_wins_over_the_default(webhook: Webhook) -> None:
    default = await webhook.add_policy(policy("default"))
    named = policy("bulk", expiration="P3D")
    await reconcile(webhook.app[QUEUE], named)  # elsewhere; this pod only knows the default
    _, body = await webhook.post_action(execution("cb-1", inputFields={"policy": "bulk"}))
    assert body["outputFields"]["hs_expiration_duration"] == "P3D"
    assert (await webhook.depth(named), await webhook.depth(default)) == (1, 0)


async def test_registered_before_its_parameters_is_held_until_they_exist(
    webhook: Webhook,
) -> None:
    """The reconcile writes the registry entry first, the rate parameters right after: an
    execution in between is queued in the policy's own queue and released once they exist."""
    await _loaded(webhook)
    queue = webhook.app[QUEUE]
    p = policy(rate={"limit": 2, "period": "1s"})
    revision = await registry_put(queue.scripts, p)  # the first half of `reconcile`
    status, body = await webhook.post_action(execution("cb-early"))
    assert (status, body["outputFields"]["hs_execution_state"]) == (200, "BLOCK")
    assert await webhook.depth(p) == 1
    await queue.apply_policy(p.with_revision(revision))  # the second half
    released = (await queue.take()).released
    assert [r.callback_id for r in released] == ["cb-early"]


async def test_no_policy_in_the_registry_fails_continue_and_holds_nothing(
    webhook: Webhook,
) -> None:
    """Executions of a policy that never appears are not held at all: after the fresh look
    they are answered FAIL_CONTINUE with the reason, and nothing of them is in Redis."""
    await _loaded(webhook)
    status, body = await webhook.post_action(execution("cb-none", inputFields={"policy": "nope"}))
    assert status == 200
    assert body["outputFields"] == {
        "hs_execution_state": "FAIL_CONTINUE",
        "throttle_status": "failed",
        "throttle_reason": (
            f"portal {PORTAL} has no policy named 'nope', no policy for action {ACTION_DEF} "
            "and no default policy (its own or the global one)"
        ),
    }
    _, body = await webhook.post_action(execution("cb-none-2", inputFields={}))
    assert body["outputFields"]["throttle_reason"] == (
        f"portal {PORTAL} has no policy for action {ACTION_DEF} "
        "and no default policy (its own or the global one)"
    )
    redis = webhook.app[QUEUE].redis
    assert await redis.keys(f"*:{PORTAL}:nope:*") == []


async def test_fresh_looks_are_shared_and_spaced(webhook: Webhook, redis: Any) -> None:
    """A burst of executions naming a missing policy cannot multiply into Redis reads: they
    share one look at the registry at a time, at most one per 50 ms."""
    await _loaded(webhook)
    await redis.config_resetstat()
    loop = asyncio.get_running_loop()
    started = loop.time()
    at_once = asyncio.Semaphore(60)  # under WEBHOOK_MAX_INFLIGHT: a burst the pod admits

    async def post(i: int) -> tuple[int, Any]:
        async with at_once:
            return await webhook.post_action(execution(f"cb-{i}", inputFields={"policy": "nope"}))

    answers = await asyncio.gather(*(post(i) for i in range(200)))
    elapsed = loop.time() - started
    assert {a[1]["outputFields"]["hs_execution_state"] for a in answers} == {"FAIL_CONTINUE"}
    stats = await redis.info("commandstats")
    gets = int(stats.get("cmdstat_get", {}).get("calls", 0))
    # One look per 50 ms at most (plus the periodic reload and the installed-portals read).
    assert gets <= 3 + elapsed / 0.05, (gets, elapsed)


async def test_config_api_answers_once_the_policy_is_in_force_on_other_pods(
    start_webhook: StartWebhook, database_url: str
) -> None:
    """Pod A's config API creates the policy; the very next execution, sent to pod B (which
    loaded the registry before and reloads only every 2 s), is held by it."""
    await migrate(database_url)
    a = await start_webhook()
    b = await start_webhook()
    await _loaded(b)
    token = a.settings.throttle_api_token
    assert token is not None
    created = await a.client.post(
        "/api/config",
        json={"name": "fresh", "portalId": PORTAL, "rate": {"limit": 5, "period": "1s"}},
        headers={"Authorization": f"Bearer {token.get_secret_value()}"},
    )
    assert created.status == 201, await created.text()
    assert a.app[POLICY_INDEX].get(PORTAL, "fresh") is not None  # A's own index, before answering
    for pod, callback in ((b, "cb-b"), (a, "cb-a")):
        status, body = await pod.post_action(execution(callback, inputFields={"policy": "fresh"}))
        assert (status, body["outputFields"]["hs_execution_state"]) == (200, "BLOCK")
    assert await a.depth(policy("fresh", rate={"limit": 5, "period": "1s"})) == 2


# --- the OAuth callback's pod ------------------------------------------------------------------
@pytest.fixture
async def installing_webhook(
    start_simulator: StartSimulator, make_settings: Any, database_url: str, redis: Any
) -> AsyncIterator[tuple[str, Any, str]]:
    """The real app on its PUBLIC_URL (the OAuth redirect goes there), the simulator as
    HubSpot, installs required."""
    await migrate(database_url)
    settings = make_settings()
    secret = settings.hubspot_client_secret.get_secret_value()
    running = await start_simulator(client_id=settings.hubspot_client_id, client_secret=secret)
    settings = make_settings(
        hubspot_api_base=running.url,
        hubspot_app_base=running.url,
        require_installed_portal=True,
    )
    app = create_app(settings, registry=CollectorRegistry())
    server = TestServer(app, host="127.0.0.1", port=settings.port)
    await server.start_server()
    yield settings.public_url, app, secret
    await server.close()


async def test_the_oauth_callback_pod_knows_the_portal_at_once(
    installing_webhook: tuple[str, Any, str],
) -> None:
    url, app, secret = installing_webhook
    installed = app[INSTALLED]
    await installed.refresh()  # loaded: an unknown portal would now be 503 (pending)
    assert installed.loaded
    await reconcile(app[QUEUE], policy(portal=4242))
    await app[POLICY_INDEX].refresh()

    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as session:
        await install_portal(session, url, 4242)
        body = json.dumps(execution("cb-first", portal=4242)).encode()
        ts = int(time.time() * 1000)
        headers = {
            "Content-Type": "application/json",
            "X-HubSpot-Signature-v3": sign_v3(secret, "POST", url + ACTION_PATH, body, ts),
            "X-HubSpot-Request-Timestamp": str(ts),
        }
        async with session.post(url + ACTION_PATH, data=body, headers=headers) as response:
            assert response.status == 200, await response.text()
            answer = await response.json()
    assert answer["outputFields"]["hs_execution_state"] == "BLOCK"
    # The mirror other pods fall back on follows at once too (the woken refresh).
    for _ in range(50):
        raw = await app[QUEUE].redis.get(keys.INSTALLED_PORTALS)
        if raw is not None and 4242 in json.loads(raw)["installed"]:
            break
        await asyncio.sleep(0.05)
    else:
        raise AssertionError("the installed-portals mirror was not rewritten")
