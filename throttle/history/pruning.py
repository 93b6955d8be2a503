"""Retention: finished executions leave `action_executions` after HISTORY_RETENTION_DAYS.

Deleted in small batches so pruning a large backlog never holds a long lock on the table the
history writers are upserting into.
"""

from __future__ import annotations

import asyncpg


async def prune(pool: asyncpg.Pool, retention_days: int, batch: int = 5000) -> int:
    """Delete finished rows older than the retention (in batches, so no long lock)."""
    total = 0
    while True:
        result = await pool.execute(
            """DELETE FROM action_executions WHERE callback_id IN (
                   SELECT callback_id FROM action_executions
                   WHERE updated_at < now() - make_interval(days => $1)
                   LIMIT $2)""",
            retention_days,
            batch,
        )
        deleted = int(result.split()[-1])
        total += deleted
        if deleted < batch:
            return total
