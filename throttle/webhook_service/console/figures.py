"""A portal's queue figures: what `throttle status --json --portal P` prints, by the same code
(`StatusReader.rows(portal_id)` and `status_json`), plus the portal's id."""

from __future__ import annotations

from typing import Any

from throttle.engine.queue_status import StatusReader, status_json


async def portal_queues(reader: StatusReader, portal_id: int) -> dict[str, Any]:
    """`{"portal_id": P, "queues": [...]}`: what `queues.json` answers and the overview shows."""
    return {"portal_id": portal_id, **status_json(await reader.rows(portal_id))}
