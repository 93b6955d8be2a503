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
"""

from __future__ import annotations

import time

from throttle import bounded_cache
from throttle.engine.inline import InlineDecision, ceiling_for, decide
from throttle.engine.policy_index import PolicyIndex
from throttle.engine.queue import Queue
from throttle.engine.registry import ensure_inline
from throttle.settings import Settings
from throttle.webhook_service.payloads import ExecutionPayload

REWRITE_S = 600.0
"""A queue this pod wrote is written again after this long (see the module docstring)."""

MAX_ENTRIES = 10_000


class InlineRates:
    """The inline half of the action endpoint, bound once the app has started."""

    def __init__(self, settings: Settings, index: PolicyIndex, queue: Queue) -> None:
        self.enabled = settings.inline_rates_enabled
        self.max_per_minute = settings.inline_max_per_minute
        self.index = index
        self.queue = queue
        self._decisions: dict[tuple[object, ...], InlineDecision] = {}
        self._written: dict[str, tuple[str, float]] = {}

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
        written = self._written.get(key)
        if written is None or written[0] != entry or time.monotonic() - written[1] > REWRITE_S:
            await ensure_inline(self.queue, decision)
            bounded_cache.put(self._written, key, (entry, time.monotonic()), MAX_ENTRIES)
        return decision, decision.note
