"""A portal's data purged: on request (`throttle portal purge P`) or once the uninstall grace
period (UNINSTALL_GRACE_DAYS) is over (the dispatchers' hourly pruning).

What goes: everything Redis holds of the portal (`registry.purge_portal_state`: its policies,
queued and in-flight executions, which are never released afterwards, buffered history events),
then in one PostgreSQL transaction its OAuth tokens (the caller passes the HubSpot layer's
delete, `hubspot.tokens.delete_portal_tokens`), its locally stored policies, its console
changes (who paused what) and its execution history, with a `portal_purges` row recording when,
why and how much (migration 0012). The `hubspot_portals` row stays, with its status and
uninstall reason but no domain or scopes, so support can still answer "what happened to portal
P". ThrottlePolicy resources in a cluster are the platform team's configuration and are not
touched.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Literal

from throttle.engine.queue import Queue
from throttle.engine.registry import purge_portal_state

log = logging.getLogger(__name__)

PurgeReason = Literal["request", "uninstalled"]
DeleteTokens = Callable[[Any, int], Awaitable[int]]
"""(connection, portal) -> token rows deleted, inside the purge's transaction."""


@dataclass(frozen=True)
class PurgeRecord:
    portal_id: int
    reason: PurgeReason
    policies: int
    executions_dropped: int
    history_rows: int
    tokens: int


async def purge_portal(
    pool: Any, queue: Queue, portal_id: int, reason: PurgeReason, delete_tokens: DeleteTokens
) -> PurgeRecord:
    """Delete the portal's data everywhere and record it; idempotent (a second purge deletes
    nothing and records that)."""
    state = await purge_portal_state(queue, portal_id)
    async with pool.acquire() as conn, conn.transaction():
        tokens = await delete_tokens(conn, portal_id)
        await conn.execute("DELETE FROM policies WHERE portal_id = $1", portal_id)
        await conn.execute("DELETE FROM console_changes WHERE portal_id = $1", portal_id)
        deleted = await conn.execute(
            "DELETE FROM action_executions WHERE portal_id = $1", portal_id
        )
        record = PurgeRecord(
            portal_id,
            reason,
            len(state.policies),
            state.executions,
            int(deleted.split()[-1]),
            tokens,
        )
        await conn.execute(
            """INSERT INTO portal_purges
                   (portal_id, reason, policies, executions_dropped, history_rows, tokens)
               VALUES ($1, $2, $3, $4, $5, $6)""",
            portal_id,
            reason,
            record.policies,
            record.executions_dropped,
            record.history_rows,
            record.tokens,
        )
    log.warning(
        "portal %s purged (%s): %d policies, %d executions dropped, %d history rows, "
        "%d token rows deleted",
        portal_id,
        reason,
        record.policies,
        record.executions_dropped,
        record.history_rows,
        record.tokens,
    )
    return record


async def history_rows(pool: Any, portal_id: int) -> int:
    """The portal's execution history rows (what a purge would delete)."""
    return int(
        await pool.fetchval(
            "SELECT count(*) FROM action_executions WHERE portal_id = $1", portal_id
        )
    )


async def portals_due_for_purge(pool: Any, grace_days: float) -> list[int]:
    """Portals uninstalled more than `grace_days` ago and not purged since."""
    rows = await pool.fetch(
        """SELECT p.portal_id FROM hubspot_portals p
           WHERE p.status = 'uninstalled'
             AND p.uninstalled_at < now() - make_interval(secs => $1::float8 * 86400)
             AND NOT EXISTS (SELECT 1 FROM portal_purges x
                             WHERE x.portal_id = p.portal_id AND x.purged_at >= p.uninstalled_at)
           ORDER BY p.portal_id""",
        float(grace_days),
    )
    return [int(r["portal_id"]) for r in rows]
