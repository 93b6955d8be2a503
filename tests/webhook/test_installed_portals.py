"""Installed portals come from PostgreSQL (hubspot_portals), mirrored to Redis for cold starts."""

from __future__ import annotations

import json

import asyncpg

from tests.fixtures.webhook import PORTAL, StartWebhook, execution, policy
from throttle.engine import keys
from throttle.history.migrations import migrate
from throttle.webhook_service.appkeys import INSTALLED, QUEUE


async def test_installs_read_from_postgres_and_mirrored(
    start_webhook: StartWebhook, database_url: str
) -> None:
    await migrate(database_url)
    conn = await asyncpg.connect(database_url)
    try:
        await conn.execute("INSERT INTO hubspot_portals (portal_id) VALUES ($1)", PORTAL)
        await conn.execute(
            "INSERT INTO hubspot_portals (portal_id, status, uninstall_reason)"
            " VALUES (555, 'uninstalled', 'refresh token refused (HTTP 400)')"
        )
    finally:
        await conn.close()
    webhook = await start_webhook(require_installed_portal=True)
    for portal in (PORTAL, 555, 777):
        await webhook.add_policy(policy(portal=portal))
    await webhook.app[INSTALLED].refresh()

    _, body = await webhook.post_action(execution("cb-1"))
    assert body["outputFields"]["hs_execution_state"] == "BLOCK"
    _, body = await webhook.post_action(execution("cb-2", portal=555))
    assert body["outputFields"]["hs_execution_state"] == "FAIL_CONTINUE"
    assert "refresh token refused" in body["outputFields"]["throttle_reason"]
    status, _ = await webhook.post_action(execution("cb-3", portal=777))
    assert status == 503  # first sight: re-read at once before calling it not installed
    await webhook.app[INSTALLED].refresh()
    _, body = await webhook.post_action(execution("cb-3", portal=777))
    assert "not installed" in body["outputFields"]["throttle_reason"]

    mirror = json.loads(await webhook.app[QUEUE].redis.get(keys.INSTALLED_PORTALS))
    assert mirror == {"installed": [PORTAL], "stopped": {"555": "refresh token refused (HTTP 400)"}}


async def test_nothing_refused_before_any_source_answered(start_webhook: StartWebhook) -> None:
    """Unmigrated database and no Redis mirror: unknown is not the same as uninstalled."""
    webhook = await start_webhook(require_installed_portal=True)
    await webhook.app[INSTALLED].refresh()
    assert webhook.app[INSTALLED].state(777) is None
    await webhook.add_policy(policy(portal=777))
    _, body = await webhook.post_action(execution(portal=777))
    assert body["outputFields"]["hs_execution_state"] == "BLOCK"
