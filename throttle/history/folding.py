"""Turning the engine's history events into one row per execution.

PostgreSQL is never on the hot path: the Lua scripts append events (received, released,
completed, retried, reaped, failed, expired) to Redis streams in the same call that changes the
queue, and the history writers (dispatcher/history_writer.py) fold each batch here before
upserting it (`throttle.history.upsert`). Folding is pure: stream order in, rows out, and a
finished outcome is never undone by a later event (a late "released" does not undo "completed").
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime

_RANK = {"queued": 0, "released": 1, "completed": 2, "failed": 2, "expired": 2}


@dataclass
class ExecutionRow:
    """What a batch of events says about one execution (folded in stream order)."""

    callback_id: str
    portal_id: int
    policy: str
    queue: str
    workflow_id: int | None = None
    action_definition_id: int | None = None
    object_type: str | None = None
    object_id: str | None = None
    input_fields: str | None = None
    received_at: datetime | None = None
    expires_at: datetime | None = None
    released_at: datetime | None = None
    completed_at: datetime | None = None
    outcome: str = "queued"
    rank: int = 0
    attempts: int = 0
    last_error: str | None = None

    def advance(self, outcome: str, rank: int | None = None) -> None:
        new_rank = _RANK[outcome] if rank is None else rank
        if new_rank >= self.rank:
            self.outcome, self.rank = outcome, new_rank


def _ts(micros: str | None) -> datetime | None:
    return datetime.fromtimestamp(int(micros) / 1e6, UTC) if micros else None


def event_callback_ids(event: dict[str, str]) -> list[str]:
    """The callback ids an event names: `cb` (one), or `cbs` (`id_list` in engine/lua/_lib.lua):
    ids joined with commas, or a JSON array when an id holds a comma or the first starts with
    "[" (so a joined list never starts with "[")."""
    cbs = event.get("cbs")
    if not cbs:
        return [event["cb"]] if event.get("cb") else []
    if cbs.startswith("["):
        try:
            ids = json.loads(cbs)
        except ValueError:
            ids = None
        if isinstance(ids, list) and all(isinstance(i, str) for i in ids):
            return ids
    return cbs.split(",")


def fold_events(events: Iterable[dict[str, str]]) -> list[ExecutionRow]:
    """Turn stream events (in order) into one row per callback id."""
    rows: dict[str, ExecutionRow] = {}

    def row(cb: str, event: dict[str, str]) -> ExecutionRow:
        found = rows.get(cb)
        if found is None:
            portal, _, policy = event.get("pol", "0:?").partition(":")
            found = rows[cb] = ExecutionRow(cb, int(portal), policy, event.get("q", "shared"))
        return found

    for e in events:
        kind = e.get("t")
        ts = _ts(e.get("ts"))
        if kind == "recv":
            r = row(e["cb"], e)
            body = json.loads(e.get("body") or "{}")
            r.workflow_id = body.get("workflow")
            r.action_definition_id = body.get("action")
            r.object_type = body.get("objectType")
            r.object_id = None if body.get("objectId") is None else str(body.get("objectId"))
            r.input_fields = json.dumps(body.get("inputs") or {})
            if body.get("note"):  # why it is held where it is (an inline rate's note)
                r.last_error = str(body["note"])
            r.received_at = _ts(e.get("enq")) or ts
            r.expires_at = _ts(e.get("exp"))
            r.advance("queued")
            continue
        cbs = event_callback_ids(e)
        attempts = e.get("atts", "").split(",") if e.get("atts") else []
        for i, cb in enumerate(cbs):
            r = row(cb, e)
            if kind == "rel":
                r.released_at = ts
                r.advance("released")
                if i < len(attempts):
                    r.attempts = max(r.attempts, int(attempts[i]))
            elif kind == "done":
                r.completed_at = ts
                r.last_error = e.get("note") or r.last_error
                r.advance("completed")
            elif kind == "retry":
                r.last_error = e.get("err") or r.last_error
                r.advance("queued", rank=1)
            elif kind == "reap":
                r.last_error = "lease expired: dispatcher stopped before completing"
                r.advance("queued", rank=1)
            elif kind == "fail":
                r.completed_at = ts
                r.last_error = e.get("err") or "failed"
                r.advance("failed")
            elif kind == "exp":
                r.completed_at = ts
                r.last_error = "expired in the queue before its turn"
                r.advance("expired")
    return list(rows.values())
