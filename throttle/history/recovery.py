"""Rebuilding the queues from PostgreSQL after Redis lost its data (`throttle recover`).

Every received execution reaches `action_executions` within seconds, so the unfinished,
unexpired rows are the queues as they were; enqueueing them again through the engine's own
dedupe makes a second run (or a run against a Redis that kept its data) change nothing.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import asyncpg

from throttle.engine import keys
from throttle.engine.policy import Policy
from throttle.engine.policy_index import registry_load
from throttle.engine.priority import FIELD as PRIORITY_FIELD
from throttle.engine.priority import parse_priority
from throttle.engine.queue import QueueItem


@dataclass
class RecoverReport:
    queued: int = 0
    already_present: int = 0
    expired: int = 0
    no_policy: list[str] = field(default_factory=list)


async def recover(queue: Any, pool: asyncpg.Pool, policies: dict[str, Policy]) -> RecoverReport:
    """Re-enqueue every received, unfinished, unexpired execution PostgreSQL knows about.

    Idempotent: an execution still queued or in flight in Redis (or finished and remembered
    for dedupe) is reported as already present, never queued twice. Executions keep their
    original arrival time and their priority (parsed from the stored inputs as the webhook
    parsed them), so release order and expiry are as before. `policies` maps
    `portal:name` to the policy to use (from the registry or the local store).
    """

    report = RecoverReport()
    rows = await pool.fetch(
        """SELECT callback_id, portal_id, policy, workflow_id, action_definition_id,
                  object_type, object_id, input_fields, received_at
           FROM action_executions
           WHERE outcome IN ('queued', 'released') AND expires_at > now()
           ORDER BY received_at, callback_id"""
    )
    for r in rows:
        key = keys.policy_key(r["portal_id"], r["policy"])
        policy = policies.get(key)
        if policy is None:
            report.no_policy.append(r["callback_id"])
            continue
        inputs = r["input_fields"]
        fields = json.loads(inputs) if isinstance(inputs, str) else dict(inputs or {})
        item = QueueItem(
            callback_id=r["callback_id"],
            portal_id=r["portal_id"],
            action_definition_id=r["action_definition_id"] or 0,
            workflow_id=r["workflow_id"],
            object_type=r["object_type"] or "",
            object_id=r["object_id"] or "",
            received_at=r["received_at"].timestamp(),
            input_fields=fields,
            priority=parse_priority(fields.get(PRIORITY_FIELD)),
        )
        result = await queue.enqueue(item, policy, check_overflow=False)
        if result.status == "queued":
            report.queued += 1
        elif result.status == "expired":
            report.expired += 1
        else:
            report.already_present += 1
    return report


async def load_policies_for_recovery(redis: Any, pool: asyncpg.Pool) -> dict[str, Policy]:
    """Policies by `portal:name`: the registry in Redis, else the local store in PostgreSQL."""

    _, registered = await registry_load(redis)
    policies = {p.key: p for p in registered}
    for r in await pool.fetch("SELECT spec FROM policies"):
        spec = r["spec"]
        try:
            p = Policy.model_validate(json.loads(spec) if isinstance(spec, str) else spec)
        except ValueError:
            continue
        policies.setdefault(p.key, p)
    return policies
