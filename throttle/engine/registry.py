"""The one function that writes a policy into the engine, and the one that retires it.

Used by the operator's handlers (in a cluster), by the config API in local mode and by the local
manifest reader, so a policy means the same thing whichever way it arrives. Idempotent: the
same spec twice changes nothing (content hash); the registry revision orders writers, so an
older copy never overwrites a newer one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from throttle.engine.policy import Policy
from throttle.engine.policy_index import registry_delete, registry_get, registry_put
from throttle.engine.queue import Queue, RetireMode


@dataclass(frozen=True)
class ReconcileResult:
    changed: bool
    """The registry entry was new or different (webhooks pick it up within a second)."""
    revision: int
    params: Literal["stale", "unchanged", "written"]
    """What happened to the rate parameters in Redis."""


@dataclass(frozen=True)
class RetireResult:
    remaining: int
    """Executions still queued or in flight; 0 = every key of the policy is gone."""

    @property
    def done(self) -> bool:
        return self.remaining == 0


async def reconcile(queue: Queue, policy: Policy) -> ReconcileResult:
    """Make Redis hold exactly this policy (registry entry and rate parameters)."""
    current = await registry_get(queue.redis, policy.key)
    if current is not None and current[1].content_hash == policy.content_hash:
        revision, changed = current[0], False
    else:
        revision, changed = await registry_put(queue.redis, policy), True
    params = await queue.apply_policy(policy.with_revision(revision))
    return ReconcileResult(changed=changed, revision=revision, params=params)


async def retire(queue: Queue, policy: Policy, mode: RetireMode = "Drain") -> RetireResult:
    """Stop routing new executions to the policy and wind down what it holds.

    `Drain` keeps releasing at the policy's rate until empty; `SUCCESS` / `FAIL_CONTINUE`
    releases everything now, completed with that state. Call again until `done`.
    """
    await registry_delete(queue.redis, policy.key)
    remaining = await queue.remove_policy(policy, mode)
    return RetireResult(remaining=remaining)
