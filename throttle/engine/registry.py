"""The one writer of policies into the engine: reconcile, retire, and parameters awaited.

Used by the operator's handlers (in a cluster), by the config API in local mode and by the local
manifest reader, so a policy means the same thing whichever way it arrives. Idempotent: the
same spec twice changes nothing (content hash); the registry revision orders writers, so an
older copy never overwrites a newer one.

The webhook never writes parameters. An execution that arrives while Redis holds none for its
policy (Redis lost them; the global default's first execution for a portal, which gets its own
copy of the default: its own queue and rate state) is queued and held, and its policy marked as
awaiting parameters; `reconcile_awaited`, run by each writer beside its check that Redis still
holds its policies, writes them and the queue is released at the policy's rate.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

from throttle.engine import keys
from throttle.engine.policy import DEFAULT_POLICY_NAME, GLOBAL_PORTAL, Policy
from throttle.engine.policy_index import registry_delete, registry_get, registry_put
from throttle.engine.queue import Queue, RetireMode

log = logging.getLogger(__name__)


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


async def reconcile_awaited(queue: Queue, sources: Mapping[str, Policy]) -> list[str]:
    """Write the parameters that queued executions await, for the policies `sources` (by key:
    the policies the caller is the writer of) define; returns the keys written.

    A policy of `sources` is reconciled; a portal's `default` that is not a policy of its own
    (nothing in the registry) gets the global default's parameters, when `sources` holds the
    global default. Other marks are left for their own writer.
    """
    global_key = keys.policy_key(GLOBAL_PORTAL, DEFAULT_POLICY_NAME)
    global_default = sources.get(global_key)
    global_revision: int | None = None
    written = []
    for key in sorted(await queue.awaiting_params()):
        policy = sources.get(key)
        if policy is not None:
            await reconcile(queue, policy)
        else:
            portal, name = keys.split_policy_key(key)
            if global_default is None or name != DEFAULT_POLICY_NAME or portal == GLOBAL_PORTAL:
                continue
            if await registry_get(queue.redis, key) is not None:
                continue  # the portal's own default: its writer's
            if global_revision is None:
                global_revision = (await reconcile(queue, global_default)).revision
            copy = global_default.for_portal(portal).with_revision(global_revision)
            await queue.apply_policy(copy)
        written.append(key)
        log.info("policy %s: parameters written for executions awaiting them", key)
    return written


async def retire(queue: Queue, policy: Policy, mode: RetireMode = "Drain") -> RetireResult:
    """Stop routing new executions to the policy and wind down what it holds.

    `Drain` keeps releasing at the policy's rate until empty; `SUCCESS` / `FAIL_CONTINUE`
    releases everything now, completed with that state. Call again until `done`.
    """
    await registry_delete(queue.redis, policy.key)
    remaining = await queue.remove_policy(policy, mode)
    return RetireResult(remaining=remaining)
