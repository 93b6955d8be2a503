"""What people changed in the portal console (pause, resume): who, what, when (migration 0013).

Written after the change is in force, read by the queue page. A row names a person (an email),
so a portal purge deletes the portal's rows with its other data.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

Change = Literal["pause", "resume"]


@dataclass(frozen=True)
class ConsoleChange:
    portal_id: int
    queue: str
    change: str
    who: str
    made_at: datetime


async def record_change(pool: Any, portal_id: int, queue: str, change: Change, who: str) -> None:
    await pool.execute(
        "INSERT INTO console_changes (portal_id, queue, change, who) VALUES ($1, $2, $3, $4)",
        portal_id,
        queue,
        change,
        who,
    )


async def recent_changes(
    pool: Any, portal_id: int, queue: str, limit: int = 20
) -> list[ConsoleChange]:
    rows = await pool.fetch(
        """SELECT portal_id, queue, change, who, made_at FROM console_changes
           WHERE portal_id = $1 AND queue = $2 ORDER BY made_at DESC, id DESC LIMIT $3""",
        portal_id,
        queue,
        limit,
    )
    return [ConsoleChange(**dict(r)) for r in rows]
