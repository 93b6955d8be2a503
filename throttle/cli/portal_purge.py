"""`throttle portal purge P`: a portal's data deleted on request (history/portal_purge.py)."""

from __future__ import annotations

import asyncio

import click

from throttle.engine.queue import Queue
from throttle.engine.redis_client import redis_client
from throttle.engine.registry import portal_state
from throttle.history.pool import create_pool
from throttle.history.portal_purge import history_rows, purge_portal
from throttle.hubspot.crypto import TokenCipher
from throttle.hubspot.tokens import TokenStore, delete_portal_tokens
from throttle.settings import Settings
from throttle.webhook_service.app import PORTALS_REFRESH_S


async def purge_or_describe(settings: Settings, portal_id: int, yes: bool) -> None:
    """With `yes`: uninstall the portal if it is installed (and give every webhook pod time to
    notice), then purge it. Without: say what a purge would delete, deleting nothing."""
    pool = await create_pool(str(settings.database_url), max_size=2)
    redis = redis_client(settings)
    try:
        queue = Queue(redis)
        store = TokenStore(pool, TokenCipher(settings.encryption_keys))
        installation = await store.installation(portal_id)
        if not yes:
            state = await portal_state(queue, portal_id)
            status = installation.status if installation else "never installed"
            click.echo(
                f"portal {portal_id} ({status}): would delete its tokens, "
                f"{len(state.policies)} policies with {state.executions} executions queued or "
                f"in flight (never sent to HubSpot), and "
                f"{await history_rows(pool, portal_id)} history rows"
                f"{'; it would be uninstalled first' if status == 'installed' else ''}. "
                "Nothing deleted: run again with --yes."
            )
            return
        if installation is not None and installation.status == "installed":
            await store.mark_uninstalled(portal_id, "data purged on request")
            click.echo(
                f"portal {portal_id} uninstalled; waiting {PORTALS_REFRESH_S + 1:.0f}s for "
                "every webhook pod to stop taking its executions"
            )
            await asyncio.sleep(PORTALS_REFRESH_S + 1)
        record = await purge_portal(pool, queue, portal_id, "request", delete_portal_tokens)
        click.echo(
            f"portal {portal_id} purged: {record.tokens} token rows, {record.policies} policies "
            f"with {record.executions_dropped} executions, {record.history_rows} history rows "
            "deleted; recorded in portal_purges"
        )
    finally:
        await redis.aclose()
        await pool.close()
