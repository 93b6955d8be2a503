"""A batch of folded rows into `action_executions`, in one statement.

The merge rules live in the SQL so that batches may arrive twice or out of order (two writers,
a retried transaction): known fields are never blanked, the outcome only moves forward by rank,
attempts only grow. Rows go in as parallel arrays through `unnest`, one round trip per batch.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from throttle.history.folding import ExecutionRow

_UPSERT = """
INSERT INTO action_executions AS t (
    callback_id, portal_id, policy, queue, workflow_id, action_definition_id, object_type,
    object_id, input_fields, received_at, expires_at, released_at, completed_at, outcome,
    attempts, last_error, outcome_rank, updated_at)
SELECT u.cb, u.portal, u.policy, u.queue, u.wf, u.act, u.ot, u.oid, u.inputs::jsonb, u.recv,
       u.exp, u.rel, u.done, u.outcome, u.att, u.err, u.rank, now()
FROM unnest($1::text[], $2::bigint[], $3::text[], $4::text[], $5::bigint[], $6::bigint[],
            $7::text[], $8::text[], $9::text[], $10::timestamptz[], $11::timestamptz[],
            $12::timestamptz[], $13::timestamptz[], $14::text[], $15::int[], $16::text[],
            $17::int[])
     AS u(cb, portal, policy, queue, wf, act, ot, oid, inputs, recv, exp, rel, done, outcome,
          att, err, rank)
ON CONFLICT (callback_id) DO UPDATE SET
    workflow_id = COALESCE(t.workflow_id, EXCLUDED.workflow_id),
    action_definition_id = COALESCE(t.action_definition_id, EXCLUDED.action_definition_id),
    object_type = COALESCE(t.object_type, EXCLUDED.object_type),
    object_id = COALESCE(t.object_id, EXCLUDED.object_id),
    input_fields = COALESCE(t.input_fields, EXCLUDED.input_fields),
    received_at = COALESCE(t.received_at, EXCLUDED.received_at),
    expires_at = COALESCE(EXCLUDED.expires_at, t.expires_at),
    released_at = COALESCE(EXCLUDED.released_at, t.released_at),
    completed_at = COALESCE(EXCLUDED.completed_at, t.completed_at),
    outcome = CASE WHEN EXCLUDED.outcome_rank >= t.outcome_rank
                   THEN EXCLUDED.outcome ELSE t.outcome END,
    outcome_rank = GREATEST(t.outcome_rank, EXCLUDED.outcome_rank),
    attempts = GREATEST(t.attempts, EXCLUDED.attempts),
    last_error = COALESCE(EXCLUDED.last_error, t.last_error),
    updated_at = now()
"""


async def write_rows(conn: Any, rows: Sequence[ExecutionRow]) -> None:
    """Upsert one batch (one row per callback id) in a single statement."""
    if not rows:
        return
    cols: list[list[Any]] = [[] for _ in range(17)]
    for r in rows:
        values = (
            r.callback_id,
            r.portal_id,
            r.policy,
            r.queue,
            r.workflow_id,
            r.action_definition_id,
            r.object_type,
            r.object_id,
            r.input_fields,
            r.received_at,
            r.expires_at,
            r.released_at,
            r.completed_at,
            r.outcome,
            r.attempts,
            r.last_error,
            r.rank,
        )
        for col, value in zip(cols, values, strict=True):
            col.append(value)
    await conn.execute(_UPSERT, *cols)
