"""Executions as support asks about them: a portal's most recent ones, one callback's or one
record's rows, a policy's releases per minute and its recent failures (the console's pages).

Reads `action_executions` only (what the history writers have copied so far), never Redis, so
`throttle history` answers even while the engine is down.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import asyncpg


async def timeline(
    pool: asyncpg.Pool, portal_id: int, callback_id: str | None = None, limit: int = 50
) -> list[dict[str, Any]]:
    """A portal's most recent executions (or one callback's), newest first, for support."""
    if callback_id is not None:
        rows = await pool.fetch(
            """SELECT * FROM action_executions WHERE portal_id = $1 AND callback_id = $2""",
            portal_id,
            callback_id,
        )
    else:
        rows = await pool.fetch(
            """SELECT * FROM action_executions WHERE portal_id = $1
               ORDER BY received_at DESC NULLS LAST LIMIT $2""",
            portal_id,
            limit,
        )
    return [dict(r) for r in rows]


async def lookup(pool: Any, portal_id: int, query: str, limit: int = 20) -> list[dict[str, Any]]:
    """The portal's executions whose callback id or record (object) id is `query`, newest
    first: support is asked about either."""
    rows = await pool.fetch(
        """SELECT * FROM action_executions
           WHERE portal_id = $1 AND (callback_id = $2 OR object_id = $2)
           ORDER BY received_at DESC NULLS LAST LIMIT $3""",
        portal_id,
        query,
        limit,
    )
    return [dict(r) for r in rows]


async def releases_per_minute(
    pool: Any, portal_id: int, policy: str, now: datetime, minutes: int = 60
) -> list[tuple[datetime, int]]:
    """Releases of one policy in each of the last `minutes` whole minutes up to `now`'s,
    oldest first, zeros included (a chart's bars)."""
    end = now.replace(second=0, microsecond=0)
    start = end - timedelta(minutes=minutes - 1)
    rows = await pool.fetch(
        """SELECT date_trunc('minute', released_at) AS minute, count(*) AS n
           FROM action_executions
           WHERE portal_id = $1 AND policy = $2 AND released_at >= $3
           GROUP BY 1""",
        portal_id,
        policy,
        start,
    )
    counts = {r["minute"]: int(r["n"]) for r in rows}
    slots = [start + timedelta(minutes=i) for i in range(minutes)]
    return [(slot, counts.get(slot, 0)) for slot in slots]


async def recent_failures(
    pool: Any, portal_id: int, policy: str, limit: int = 20
) -> list[dict[str, Any]]:
    """The policy's last failed or expired executions, with their reasons."""
    rows = await pool.fetch(
        """SELECT callback_id, object_type, object_id, outcome, last_error, attempts,
                  coalesce(completed_at, updated_at) AS failed_at
           FROM action_executions
           WHERE portal_id = $1 AND policy = $2 AND outcome IN ('failed', 'expired')
           ORDER BY updated_at DESC LIMIT $3""",
        portal_id,
        policy,
        limit,
    )
    return [dict(r) for r in rows]
