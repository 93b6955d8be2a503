"""When each execution was received and released, as the engine recorded it (Redis' clock).

The engine writes every state change to its shard's history stream in the same Lua call that
makes it; history writers (inside the dispatchers) copy the events to PostgreSQL's
`action_executions` and then delete them from the stream. So the complete record at any moment
is PostgreSQL plus whatever the streams still hold — this reads both, streams last (they are
newer). Release instants come from Redis `TIME` inside `take`, so they carry no sampling error
and no skew between dispatchers: the right thing to judge a rate on.

A callback released, handed back (retryable failure) and released again keeps its last release
instant only (PostgreSQL keeps one row per callback).
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from throttle.engine import keys
from throttle.history.folding import event_callback_ids


@dataclass
class Execution:
    policy_key: str
    received: float | None = None
    released: float | None = None
    priority: str | None = None
    """The action's `priority` input field as received (None: not given)."""


@dataclass
class ReleaseLog:
    executions: dict[str, Execution] = field(default_factory=dict)

    def _get(self, callback_id: str, policy_key: str) -> Execution:
        found = self.executions.get(callback_id)
        if found is None:
            found = self.executions[callback_id] = Execution(policy_key)
        return found

    def times(self, policy_key: str) -> list[float]:
        return sorted(
            e.released
            for e in self.executions.values()
            if e.policy_key == policy_key and e.released is not None
        )

    def waits(self, policy_key: str) -> list[float]:
        return [
            e.released - e.received
            for e in self.executions.values()
            if e.policy_key == policy_key and e.released is not None and e.received is not None
        ]

    def waits_by_priority(self, policy_key: str) -> dict[str, list[float]]:
        """Waits of released executions, per the priority field they carried ("" = none)."""
        found: dict[str, list[float]] = defaultdict(list)
        for e in self.executions.values():
            if e.policy_key == policy_key and e.released is not None and e.received is not None:
                found[e.priority or ""].append(e.released - e.received)
        return dict(found)

    def apply_stream_entry(self, fields: dict[str, str]) -> None:
        kind = fields.get("t")
        ts = int(fields.get("ts", "0")) / 1e6
        pol = fields.get("pol", "")
        if kind == "recv":
            enq = int(fields.get("enq", "0") or 0) / 1e6
            execution = self._get(fields.get("cb", ""), pol)
            execution.received = enq or ts
            execution.priority = _priority(fields.get("body"))
        elif kind == "rel":
            for cb in event_callback_ids(fields):
                self._get(cb, pol).released = ts


def _priority(body: str | None) -> str | None:
    """The priority input field of a "received" event's JSON body."""
    try:
        inputs = json.loads(body or "{}").get("inputs") or {}
    except (ValueError, AttributeError):
        return None
    value = inputs.get("priority")
    return None if value is None else str(value)


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


async def read_streams(redis: Any, log: ReleaseLog, batch: int = 5000) -> None:
    """Apply what every shard's stream still holds (XRANGE in pages; read-only)."""
    for shard in range(keys.SHARDS):
        start = "-"
        while True:
            entries = await redis.xrange(keys.events(shard), min=start, max="+", count=batch)
            for _entry_id, raw in entries:
                log.apply_stream_entry({_text(k): _text(v) for k, v in raw.items()})
            if len(entries) < batch:
                break
            start = "(" + _text(entries[-1][0])


async def read_postgres(database_url: str, log: ReleaseLog, portals: Iterable[int]) -> int:
    """Rows the history writers already copied; returns how many rows had a release."""
    import asyncpg

    conn = await asyncpg.connect(database_url)
    try:
        rows = await conn.fetch(
            "SELECT callback_id, portal_id, policy, "
            "extract(epoch FROM received_at)::float8 AS received, "
            "extract(epoch FROM released_at)::float8 AS released, "
            "input_fields->>'priority' AS priority "
            "FROM action_executions WHERE portal_id = ANY($1::bigint[])",
            list(portals),
        )
    finally:
        await conn.close()
    released = 0
    for row in rows:
        execution = log._get(row["callback_id"], keys.policy_key(row["portal_id"], row["policy"]))
        execution.received = row["received"]
        execution.released = row["released"]
        execution.priority = row["priority"]
        released += row["released"] is not None
    return released


async def read_release_log(redis: Any, database_url: str, portals: Iterable[int]) -> ReleaseLog:
    log = ReleaseLog()
    await read_postgres(database_url, log, portals)
    await read_streams(redis, log)
    return log


def per_policy(log: ReleaseLog) -> dict[str, int]:
    counts: dict[str, int] = defaultdict(int)
    for execution in log.executions.values():
        if execution.released is not None:
            counts[execution.policy_key] += 1
    return dict(counts)
