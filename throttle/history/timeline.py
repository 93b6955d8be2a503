"""Executions as support asks about them: a portal's most recent ones, or one callback's row.

Reads `action_executions` only (what the history writers have copied so far), never Redis, so
`throttle history` answers even while the engine is down.
"""

from __future__ import annotations

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
