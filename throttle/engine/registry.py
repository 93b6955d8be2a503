"""The one writer of policies into the engine: reconcile, retire, and parameters awaited.

Used by the operator's handlers (in a cluster), by the config API in local mode and by the local
manifest reader, so a policy means the same thing whichever way it arrives. Idempotent: the
same spec twice changes nothing (content hash); the registry revision orders writers, so an
older copy never overwrites a newer one.

The webhook writes parameters for one kind of policy only, and only through this module: an inline
queue (engine/inline.py) on its first execution (`ensure_inline`). An execution that arrives while
Redis holds none for its policy (Redis lost them; the global default's first execution for a
portal, which gets its own copy of the default: its own queue and rate state) is queued and held,
and its policy marked as awaiting parameters; `reconcile_awaited`, run by each writer beside its
check that Redis still holds its policies, writes them and the queue is released at the policy's
rate.

A portal's purge (`purge_portal_state`) is not a retire: nothing is released, everything the
portal's policies hold in Redis is dropped at once (lua/purge.lua).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import ValidationError

from throttle.engine import keys
from throttle.engine.inline import PREFIX as INLINE_PREFIX
from throttle.engine.inline import InlineDecision
from throttle.engine.policy import DEFAULT_POLICY_NAME, GLOBAL_PORTAL, Policy
from throttle.engine.policy_index import registry_delete, registry_get, registry_put
from throttle.engine.queue import Queue, RetireMode
from throttle.engine.scripts import Scripts

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
        revision, changed = await registry_put(queue.scripts, policy), True
    params = await queue.apply_policy(policy.with_revision(revision))
    return ReconcileResult(changed=changed, revision=revision, params=params)


async def ensure_inline(queue: Queue, decision: InlineDecision) -> None:
    """Create or update an inline queue (engine/inline.py) on its first execution: its
    parameters, its entry in the shard's inline index and its first release, in ONE script call
    (they share the shard's slot). No registry revision: the webhook derives an inline queue's
    policy from the execution's fields, so nothing waits for the index to reload it; a copy
    written twice (two pods at once) is the same content, and the newest fields win."""
    await queue.apply_policy(
        decision.policy, inline_entry=decision.entry, not_before=decision.not_before
    )


async def reconcile_awaited(queue: Queue, sources: Mapping[str, Policy]) -> list[str]:
    """Write the parameters that queued executions await, for the policies `sources` (by key:
    the policies the caller is the writer of) define; returns the keys written.

    A policy of `sources` is reconciled; a portal's `default` that is not a policy of its own
    (nothing in the registry) gets the global default's parameters, when `sources` holds the
    global default; an inline queue gets its parameters again from its entry
    (`keys.inline_queues`). Other marks are left for their own writer.
    """
    global_key = keys.policy_key(GLOBAL_PORTAL, DEFAULT_POLICY_NAME)
    global_default = sources.get(global_key)
    global_revision: int | None = None
    written = []
    for key in sorted(await queue.awaiting_params()):
        policy = sources.get(key)
        if policy is not None:
            await reconcile(queue, policy)
        elif keys.split_policy_key(key)[1].startswith(INLINE_PREFIX):
            if not await _restore_inline(queue, key):
                continue  # no entry either: the webhook writes it again (inline_rates.py)
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


async def _restore_inline(queue: Queue, key: str) -> bool:
    """Write an inline queue's parameters again from its entry (Redis lost the parameters)."""
    raw = await queue.redis.hget(keys.inline_queues(keys.shard_of(key)), key)
    if raw is None:
        return False
    try:
        data = json.loads(raw)
        policy = Policy.model_validate(data["spec"])
        not_before = float(data.get("notBefore") or 0.0)
    except (ValueError, KeyError, TypeError, ValidationError):
        return False
    entry = raw.decode() if isinstance(raw, bytes) else str(raw)
    await queue.apply_policy(policy, inline_entry=entry, not_before=not_before)
    return True


async def retire(queue: Queue, policy: Policy, mode: RetireMode = "Drain") -> RetireResult:
    """Stop routing new executions to the policy and wind down what it holds.

    `Drain` keeps releasing at the policy's rate until empty; `SUCCESS` / `FAIL_CONTINUE`
    releases everything now, completed with that state. Call again until `done`.
    """
    await registry_delete(queue.scripts, policy.key)
    remaining = await queue.remove_policy(policy, mode)
    return RetireResult(remaining=remaining)


@dataclass(frozen=True)
class PortalState:
    """What Redis holds of one portal (what its purge drops)."""

    policies: tuple[str, ...]
    """Its policies' keys (`portal:name`): registry entries and queues without one (the copy
    of the global default, a deleted policy still draining)."""
    executions: int
    """Queued or in flight."""
    events: int = 0
    """History events still buffered in the streams (counted when purged)."""


async def portal_state(queue: Queue, portal_id: int) -> PortalState:
    """The portal's policies and executions in Redis, changing nothing."""
    pkeys = await _portal_policies(queue.redis, portal_id)
    held = [int(await queue.redis.hlen(keys.meta(pkey))) for pkey in pkeys]
    return PortalState(tuple(pkeys), sum(held))


async def purge_portal_state(queue: Queue, portal_id: int) -> PortalState:
    """Delete everything Redis holds of the portal: registry entries, parameters, queues,
    executions queued or in flight (never released: their leases go too), dedupe, counters, its
    buffered history events and its HubSpot budget keys. Idempotent."""
    pkeys = await _portal_policies(queue.redis, portal_id)
    dropped = 0
    for pkey in pkeys:
        await registry_delete(queue.scripts, pkey)
        shard = keys.shard_of(pkey)
        result = await queue.scripts.run(
            Scripts.purge(
                keys.params(pkey),
                keys.queues(pkey),
                keys.meta(pkey),
                keys.done(pkey),
                keys.stats(pkey),
                keys.due(shard),
                keys.leases(shard),
                keys.awaiting_params(shard),
                prefix=keys.shard_prefix(shard),
                policy=pkey,
            )
        )
        dropped += int(result[0])
        await queue.redis.hdel(keys.inline_queues(shard), pkey)
    events = 0
    for shard in sorted({keys.shard_of(pkey) for pkey in pkeys}):
        events += await _drop_events(queue.redis, shard, f"{portal_id}:")
    for key in (
        keys.hubspot_budget(portal_id),
        keys.hubspot_hold(portal_id),
        keys.hubspot_in_flight(portal_id),
        keys.hubspot_token_lock(portal_id),
    ):
        await queue.redis.delete(key)
    return PortalState(tuple(pkeys), dropped, events)


async def _portal_policies(redis: Any, portal_id: int) -> list[str]:
    """Registry entries of the portal, plus policies with keys but no entry (found by SCAN,
    on every node of a Cluster: a purge is rare, a full scan acceptable)."""
    found = {
        _text(name)
        for name in await redis.hkeys(keys.REGISTRY)
        if keys.split_policy_key(_text(name))[0] == portal_id
    }
    async for raw in redis.scan_iter(match=f"{keys.PREFIX}:*:p:{portal_id}:*", count=1000):
        parts = _text(raw).split(":", 3)  # throttle, {tN}, p, portal:name:suffix
        if len(parts) == 4 and parts[2] == "p":
            pkey = parts[3].rsplit(":", 1)[0]
            if keys.split_policy_key(pkey)[0] == portal_id:
                found.add(pkey)
    return sorted(found)


async def _drop_events(redis: Any, shard: int, policy_prefix: str, chunk: int = 1000) -> int:
    """Delete the portal's events from a shard's history stream (those PostgreSQL has not
    taken yet), so they cannot write its history back after the purge."""
    stream = keys.events(shard)
    dropped, start = 0, "-"
    while True:
        entries = await redis.xrange(stream, min=start, max="+", count=chunk)
        ids = [
            entry_id
            for entry_id, fields in entries
            if _text(fields.get(b"pol", fields.get("pol", ""))).startswith(policy_prefix)
        ]
        if ids:
            dropped += int(await redis.xdel(stream, *ids))
        if len(entries) < chunk:
            return dropped
        start = "(" + _text(entries[-1][0])


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
