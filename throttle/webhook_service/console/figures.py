"""A portal's queue figures: the rows `throttle status --json` prints, for one portal.

Until `queue_status.status_json` and `StatusReader.rows(portal_id=…)` exist (branch `figures`),
the rows are read for every portal and filtered here, and the JSON shape is built here.
"""

from __future__ import annotations

import math
from typing import Any

from throttle.engine.inline import PREFIX as INLINE_PREFIX
from throttle.engine.queue_status import StatusReader, StatusRow


def _state(row: StatusRow) -> str:
    if row.paused:
        return "paused"
    return "releasing" if row.queued else "idle"


def _row_json(row: StatusRow) -> dict[str, Any]:
    return {
        "portal_id": row.portal_id,
        "name": row.name,
        "kind": "inline" if row.name.startswith(INLINE_PREFIX) else "policy",
        "rate": row.rate,
        "paused": row.paused,
        "state": _state(row),
        "queued": row.queued,
        "in_flight": row.in_flight,
        "oldest_wait_s": round(row.oldest_wait_s, 3),
        "released_total": row.released_total,
        "released_today": row.released_today,
        "completed_total": row.completed_total,
        "failed_total": row.failed_total,
        "drain_s": None if math.isinf(row.drain_s) else round(row.drain_s, 3),
    }


async def portal_queues(reader: StatusReader, portal_id: int) -> dict[str, Any]:
    """`{"portal_id": P, "queues": [...]}`: what `queues.json` answers and the overview shows."""
    rows = [row for row in await reader.rows() if row.portal_id == portal_id]
    return {"portal_id": portal_id, "queues": [_row_json(row) for row in rows]}
