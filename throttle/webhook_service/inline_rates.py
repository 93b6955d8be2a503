"""Which inline queue holds an execution that carries inline-rate fields (engine/inline.py).

Only executions whose input fields carry an inline rate come here; every other one takes the
action endpoint's usual path, unchanged. The rules, in order (docs/policies.md, "Inline rates"):

1. Inline rates switched off — for all (`INLINE_RATES_ENABLED=false`) or for the portal (its
   ceiling's `enabled: false`) — the execution is held by the portal's policies as if it carried
   no inline fields, and its history says why.
2. A policy named in the `policy` field that the portal has takes precedence over the inline
   fields (a platform team's policy is never overridden from the workflow editor); the history
   says so, and the output fields name that policy.
3. Otherwise the inline queue `engine.inline.decide` derives from the fields under the portal's
   ceiling. The first execution of a queue on this pod (or the first with new fields, or a new
   ceiling) writes it through `registry.ensure_inline`: one Redis round trip before the enqueue.
   Later ones cost nothing more than an old-style execution; the write is repeated once every
   `REWRITE_S` per queue and pod, so a queue whose parameters Redis lost is written again.
   An execution naming a shared queue without a usable rate joins that queue at its own rate
   if it exists (one read, per `JOIN_S`), rather than setting it to the ceiling's.
"""

from __future__ import annotations

import json
import time

from pydantic import ValidationError

from throttle import bounded_cache
from throttle.engine import keys
from throttle.engine.inline import InlineDecision, ceiling_for, decide
from throttle.engine.policy import Policy
from throttle.engine.policy_index import PolicyIndex
from throttle.engine.queue import Queue
from throttle.engine.registry import ensure_inline
from throttle.settings import Settings
from throttle.webhook_service.payloads import ExecutionPayload

REWRITE_S = 600.0
"""A queue this pod wrote is written again after this long (see the module docstring)."""

MAX_ENTRIES = 10_000

JOIN_S = 10.0
"""How long a pod trusts what it read of a shared queue that an execution without a usable rate
joins (see `InlineDecision.ceiling_note`)."""
JOINED_NOTE = "no usable rate in the fields: the shared queue's own rate applies"


class InlineRates:
    """The inline half of the action endpoint, bound once the app has started."""

    def __init__(self, settings: Settings, index: PolicyIndex, queue: Queue) -> None:
        self.enabled = settings.inline_rates_enabled
        self.max_per_minute = settings.inline_max_per_minute
        self.index = index
        self.queue = queue
        self._decisions: dict[tuple[object, ...], InlineDecision] = {}
        self._written: dict[str, tuple[str, float]] = {}
        self._joined: dict[str, tuple[InlineDecision | None, float]] = {}

    async def route(
        self, payload: ExecutionPayload, name: str | None, values: dict[str, str]
    ) -> tuple[InlineDecision | None, str]:
        """The inline queue to hold the execution in, written if this pod has not yet; or None
        with the reason when the portal's policies hold it (rules 1 and 2)."""
        portal_id = payload.origin.portal_id
        if not self.enabled:
            return None, "inline rates are off (INLINE_RATES_ENABLED); held by the portal's policy"
        ceiling = ceiling_for(self.index.get, portal_id)
        if not ceiling.enabled:
            return None, f"inline rates are off for portal {portal_id}; held by its policy"
        if name is not None:
            if self.index.get(portal_id, name) is None:
                await self.index.refresh_since()  # created a moment ago on another pod?
            if self.index.get(portal_id, name) is not None:
                return None, (
                    f"policy {name!r} applies: a named policy takes precedence over inline rates"
                )
        now = time.time()
        workflow_id = payload.context.workflow_id
        action_id = payload.origin.action_definition_id
        cache_key = (portal_id, workflow_id, action_id, *sorted(values.items()), ceiling, now // 60)
        decision = self._decisions.get(cache_key)
        if decision is None:
            decision = decide(
                values,
                portal_id=portal_id,
                workflow_id=workflow_id,
                action_id=action_id,
                ceiling=ceiling,
                default_max_per_minute=self.max_per_minute,
                now=now,
            )
            bounded_cache.put(self._decisions, cache_key, decision, MAX_ENTRIES)
        key, entry = decision.policy.key, decision.entry
        if decision.ceiling_note and decision.shared:
            joined = await self._shared_queue(key)
            if joined is not None and _per_second(joined.policy) <= _per_second(decision.policy):
                return joined, "; ".join([*decision.notes, JOINED_NOTE])
        written = self._written.get(key)
        if written is None or written[0] != entry or time.monotonic() - written[1] > REWRITE_S:
            await ensure_inline(self.queue, decision)
            bounded_cache.put(self._written, key, (entry, time.monotonic()), MAX_ENTRIES)
        return decision, decision.note

    async def _shared_queue(self, key: str) -> InlineDecision | None:
        """The shared queue as it is (its entry), read at most once per `JOIN_S` per pod; None
        when it does not exist yet (then the execution creates it at the ceiling's rate)."""
        known = self._joined.get(key)
        if known is not None and time.monotonic() - known[1] < JOIN_S:
            return known[0]
        raw = await self.queue.redis.hget(keys.inline_queues(keys.shard_of(key)), key)
        found = None
        try:
            if raw is not None:
                data = json.loads(raw)
                policy = Policy.model_validate(data["spec"])
                found = InlineDecision(policy, (), float(data.get("notBefore") or 0.0))
        except (ValueError, KeyError, TypeError, ValidationError):
            found = None  # not ours to read: the execution writes the queue afresh
        bounded_cache.put(self._joined, key, (found, time.monotonic()), MAX_ENTRIES)
        return found


def _per_second(policy: Policy) -> float:
    """A queue no faster than the ceiling's rate may be joined (the ceiling may have dropped)."""
    return policy.rate.limit / policy.rate.period.total_seconds()
