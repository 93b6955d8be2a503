"""The console's change record (migration 0013): who paused or resumed what, newest first, kept
per portal, deleted with the portal's other data."""

from __future__ import annotations

from typing import Any

import asyncpg
import pytest

from throttle.engine.queue import Queue
from throttle.history.console_changes import recent_changes, record_change
from throttle.history.migrations import migrate
from throttle.history.portal_purge import purge_portal


async def _no_tokens(_conn: Any, _portal: int) -> int:
    return 0


async def test_changes_are_recorded_listed_and_purged(database_url: str, redis: Any) -> None:
    applied = await migrate(database_url)
    assert "0013_console_changes" in applied
    pool = await asyncpg.create_pool(database_url, min_size=1, max_size=2)
    try:
        await record_change(pool, 1, "enrichment", "pause", "ops@example.com")
        await record_change(pool, 1, "enrichment", "resume", "link:ann")
        await record_change(pool, 1, "other", "pause", "link:bob")
        await record_change(pool, 2, "enrichment", "pause", "them@example.com")
        changes = await recent_changes(pool, 1, "enrichment")
        assert [(c.change, c.who) for c in changes] == [
            ("resume", "link:ann"),
            ("pause", "ops@example.com"),
        ]
        with pytest.raises(asyncpg.CheckViolationError):
            await record_change(pool, 1, "enrichment", "delete", "x")  # type: ignore[arg-type]
        await purge_portal(pool, Queue(redis), 1, "request", _no_tokens)
        assert await recent_changes(pool, 1, "enrichment") == []
        assert len(await recent_changes(pool, 2, "enrichment")) == 1
    finally:
        await pool.close()
