"""The operator's side of the engine: which policies it owns, and the few calls it makes.

Both the kopf operator and the local manifest reconciler keep an `OwnedPolicies`: the policies
they are the source of, each with where it came from (`owner`: a resource or a file). It

- applies a policy through the engine's one `reconcile` function and remembers it, refusing a
  second source for the same `portal:name` (the older source keeps it, deterministically);
- finds, in one Redis round trip for all of them, policies whose parameters Redis no longer
  holds (a restart without data, a flush) and writes them back, and writes the parameters that
  queued executions await (`registry.reconcile_awaited`);
- reads a policy's queue figures for status, and retires a deleted policy as its `onDelete`
  says, one engine call per attempt, until nothing of it is left.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

from throttle.engine import keys
from throttle.engine import registry as engine
from throttle.engine.forecast import projected_wait
from throttle.engine.inline_index import inline_load
from throttle.engine.manifests import OnDelete
from throttle.engine.policy import DEFAULT_POLICY_NAME, GLOBAL_PORTAL, Policy
from throttle.engine.queue import PolicyStats, Queue, RetireMode
from throttle.operator.status_patch import QueueFigures

log = logging.getLogger(__name__)

RETIRE_MODES: dict[OnDelete, RetireMode] = {
    "Drain": "Drain",
    "Succeed": "SUCCESS",
    "Fail": "FAIL_CONTINUE",
}
"""`spec.onDelete` → the engine's retire mode (the state the dispatcher completes them with)."""

_CHECK_CHUNK = 1_000
"""Policies per multi-key command of the loss check (bounds one command's time in Redis)."""

_EXACT_DRAIN_LIMIT = 5_000
"""Beyond this depth the drain estimate is linear (the exact one walks every release)."""


class AlreadyClaimed(Exception):
    """Another source (resource or file) already defines this `portal:name`."""

    def __init__(self, key: str, owner: str) -> None:
        self.key, self.owner = key, owner
        super().__init__(f"policy {key} is already defined by {owner}")


@dataclass
class OwnedPolicy:
    """One policy this operator is the source of, and where it came from."""

    owner: str
    """`namespace/name` of the resource, or the manifest's path."""
    created: str
    """Sortable creation stamp of the source (older wins a conflict)."""
    policy: Policy
    generation: int = 0
    retiring: bool = False


@dataclass
class ApplyOutcome:
    written: bool
    """True when Redis' registry entry or parameters changed (False: they already matched)."""
    result: engine.ReconcileResult


@dataclass
class OwnedPolicies:
    """The policies one operator (or local reconciler) is the source of, by `portal:name`."""

    queue: Queue
    entries: dict[str, OwnedPolicy] = field(default_factory=dict)
    """By `portal:name`; changed only through `_own` and `_drop`, which keep `_keys` in step."""
    _keys: dict[str, str] = field(default_factory=dict)
    """`owner` → `portal:name`: every handler call looks its resource up, and a scan of all
    entries per call made 10,000 policies cost 10,000² steps per status round."""

    # ---- ownership ------------------------------------------------------------------------------

    def owner_of(self, key: str) -> str | None:
        entry = self.entries.get(key)
        return entry.owner if entry else None

    def key_of(self, owner: str) -> str | None:
        return self._keys.get(owner)

    def _own(self, entry: OwnedPolicy) -> None:
        replaced = self.entries.get(entry.policy.key)
        if replaced is not None and self._keys.get(replaced.owner) == entry.policy.key:
            del self._keys[replaced.owner]
        self.entries[entry.policy.key] = entry
        self._keys[entry.owner] = entry.policy.key

    def _drop(self, key: str) -> None:
        entry = self.entries.pop(key, None)
        if entry is not None and self._keys.get(entry.owner) == key:
            del self._keys[entry.owner]

    def claim(self, owner: str, created: str, policy: Policy) -> None:
        """Own `policy.key` for `owner`, unless an older source holds it (AlreadyClaimed)."""
        entry = self.entries.get(policy.key)
        if entry is not None and entry.owner != owner:
            if (entry.created, entry.owner) <= (created, owner):
                raise AlreadyClaimed(policy.key, entry.owner)
            log.warning("policy %s: %s is older than %s; it wins", policy.key, owner, entry.owner)

    def forget(self, owner: str) -> None:
        key = self._keys.get(owner)
        if key is not None:
            self._drop(key)

    # ---- engine calls ---------------------------------------------------------------------------

    async def apply(
        self, owner: str, created: str, policy: Policy, generation: int = 0
    ) -> ApplyOutcome:
        """Reconcile `policy` into Redis and own it (raises AlreadyClaimed, Redis errors)."""
        self.claim(owner, created, policy)
        previous = self.key_of(owner)
        result = await engine.reconcile(self.queue, policy)
        if previous is not None and previous != policy.key:  # a source renamed its policy
            self._drop(previous)
        self._own(OwnedPolicy(owner, created, policy, generation))
        return ApplyOutcome(written=result.changed or result.params == "written", result=result)

    async def missing(self) -> list[OwnedPolicy]:
        """Entries whose parameters Redis no longer holds.

        Per chunk of `_CHECK_CHUNK` policies, one multi-key EXISTS and one HMGET of the registry
        answer "all there" (the usual case) in two commands, so 10,000 policies cost 20
        commands per check instead of 20,000; only a chunk that lost something is looked at
        policy by policy."""
        entries = [e for e in self.entries.values() if not e.retiring]
        lost: list[OwnedPolicy] = []
        redis = self.queue.redis
        for start in range(0, len(entries), _CHECK_CHUNK):
            chunk = entries[start : start + _CHECK_CHUNK]
            names = [e.policy.key for e in chunk]
            present = await redis.exists(*(keys.params(k) for k in names))
            registered = await redis.hmget(keys.REGISTRY, names)
            if present == len(chunk) and all(r is not None for r in registered):
                continue
            async with redis.pipeline(transaction=False) as pipe:
                for name in names:
                    pipe.exists(keys.params(name))
                found = await pipe.execute()
            lost += [e for e, f, r in zip(chunk, found, registered, strict=True) if not (f and r)]
        return lost

    async def restore_missing(self) -> list[OwnedPolicy]:
        """Write back what Redis lost, then the parameters queued executions await (the global
        default's copy for a portal's first execution, too); returns the entries restored."""
        restored = []
        for entry in await self.missing():
            await engine.reconcile(self.queue, entry.policy)
            restored.append(entry)
            log.warning("policy %s: parameters were missing in Redis; restored", entry.policy.key)
        sources = {key: e.policy for key, e in self.entries.items() if not e.retiring}
        await engine.reconcile_awaited(self.queue, sources)
        return restored

    async def retire(self, policy: Policy, mode: OnDelete) -> int:
        """One retire step; returns what is still queued or in flight (0 = gone from Redis)."""
        entry = self.entries.get(policy.key)
        if entry is not None:
            entry.retiring = True
        remaining = (await engine.retire(self.queue, policy, RETIRE_MODES[mode])).remaining
        if remaining == 0:
            self._drop(policy.key)
        return remaining

    async def figures(self, policy: Policy) -> QueueFigures:
        """The policy's queue figures as status shows them."""
        return (await self.figures_many([policy]))[0]

    async def figures_many(self, policies: Sequence[Policy]) -> list[QueueFigures]:
        """Many policies' figures in a few round trips (the status sweep reads them all)."""
        now = time.time()
        stats = await self.queue.stats_many(policies)
        figures = [figures_from_stats(p, s, now) for p, s in zip(policies, stats, strict=True)]
        defaults = [i for i, p in enumerate(policies) if p.name == DEFAULT_POLICY_NAME]
        if not defaults:
            return figures
        inline = [p for p, _note in await inline_load(self.queue.redis)]
        depths = [s.depth for s in await self.queue.stats_many(inline)]
        for i in defaults:
            portal = policies[i].portal_id
            mine = [
                d
                for p, d in zip(inline, depths, strict=True)
                if portal in (GLOBAL_PORTAL, p.portal_id)
            ]
            figures[i] = dataclasses.replace(
                figures[i], inline_queues=len(mine), inline_queue_depth=sum(mine)
            )
        return figures


def tombstone(key: str) -> Policy:
    """A stand-in Policy for `portal:name` whose spec is unknown, enough to retire it."""
    portal, name = keys.split_policy_key(key)
    return Policy.model_validate({"name": name, "portalId": portal, "rate": {"limit": 1}})


def figures_from_stats(
    policy: Policy, stats: PolicyStats, now: float | None = None
) -> QueueFigures:
    now = time.time() if now is None else now
    last = stats.last_release_at
    return QueueFigures(
        depth=stats.depth,
        in_flight=stats.in_flight,
        released_total=stats.released,
        oldest_queued_seconds=stats.oldest_age_seconds if stats.depth else None,
        last_release_time=datetime.fromtimestamp(last, UTC) if last else None,
        projected_drain_seconds=drain_seconds(policy, stats.depth, now),
    )


def drain_seconds(policy: Policy, depth: int, now: float) -> float | None:
    """Seconds until `depth` queued items are out at the policy's rate (None: never, paused)."""
    if depth <= 0:
        return 0.0
    if policy.paused:
        return None
    if depth <= _EXACT_DRAIN_LIMIT:
        wait = projected_wait(policy, depth, now)
    else:
        wait = projected_wait(policy, _EXACT_DRAIN_LIMIT, now) * depth / _EXACT_DRAIN_LIMIT
    return None if math.isinf(wait) else wait
