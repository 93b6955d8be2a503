"""Which policy holds an incoming execution, answered from memory.

The webhook may call Redis once per request (the enqueue), so policy resolution cannot read
Redis. `PolicyIndex` keeps every active policy in process, loaded from the registry in Redis
(`keys.REGISTRY`, written by `engine/registry.py`'s `reconcile`) at start and refreshed whenever the
registry's revision counter moves (`refresh`, which its owner calls every few seconds: one GET).

Resolution order: the policy the action's `policy` input field names (in that portal) → the
portal's policy for that action definition → the portal's default (`name: default`) → the
global default (`portalId: 0`, `name: default`, applied per portal).

A policy created a moment ago may not be in memory yet, and "no policy" must never mean "not
loaded yet": `refresh_since` is the fresh look the webhook takes before answering "no policy".
It is single-flight and rate-limited per process (concurrent callers share one read; reads are
at least `MIN_LOOK_GAP_S` apart), so executions naming a policy that does not exist cost Redis
at most one GET per gap, however many arrive.

Ordering: `registry_put` and `registry_delete` change an entry and the revision counter in one
script, and a load reads the counter before the entries. A load therefore never carries a
revision newer than its entries, and a refresh that finds the counter unmoved may trust what it
holds: once Redis shows a change (the config API's "in force" check), the next refresh has it.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any, TypeVar

from pydantic import ValidationError

from throttle import bounded_cache
from throttle.engine import keys
from throttle.engine.policy import DEFAULT_POLICY_NAME, GLOBAL_PORTAL, Policy
from throttle.engine.scripts import Scripts

log = logging.getLogger(__name__)

MAX_KNOWN = 20_000
"""Decoded entries a long-lived reader keeps (`registry_load`'s and `inline_load`'s `known`)."""
MIN_LOOK_GAP_S = 0.05
"""Fresh looks at the registry (`PolicyIndex.refresh_since`) are at least this far apart."""


# --- the registry in Redis ------------------------------------------------------------------------
async def registry_get(redis: Any, policy_key: str) -> tuple[int, Policy] | None:
    raw = await redis.hget(keys.REGISTRY, policy_key)
    if raw is None:
        return None
    return _decode(raw)


async def registry_put(scripts: Scripts, policy: Policy) -> int:
    """Store the policy under a new revision (entry and counter in one step); returns it."""
    spec = json.dumps(policy.spec(), separators=(",", ":"))
    call = Scripts.registry_put(keys.REGISTRY, keys.REGISTRY_REV, policy_key=policy.key, spec=spec)
    return int(await scripts.run(call))


async def registry_delete(scripts: Scripts, policy_key: str) -> bool:
    call = Scripts.registry_delete(keys.REGISTRY, keys.REGISTRY_REV, policy_key=policy_key)
    return int(await scripts.run(call)) > 0


async def registry_load(
    redis: Any,
    portal_id: int | None = None,
    known: dict[Any, tuple[int, Policy]] | None = None,
) -> tuple[int, list[Policy]]:
    """(revision, policies); entries that no longer validate are skipped with a warning.

    `portal_id`: only that portal's, picked by key before anything is decoded. `known`: entries
    already decoded, by their raw JSON, kept by a caller that loads again and again (the
    console's figures every 2 s): validating a policy costs ~0.2 ms, 1,000 of them a page's
    whole time budget."""
    revision = int(await redis.get(keys.REGISTRY_REV) or 0)
    entries = await redis.hgetall(keys.REGISTRY)
    return revision, [p for _rev, p in decode_entries(entries, _decode_logged, portal_id, known)]


T = TypeVar("T")


def decode_entries(
    entries: Mapping[Any, Any],
    decode: Callable[[Any, Any], T | None],
    portal_id: int | None = None,
    known: dict[Any, T] | None = None,
) -> list[T]:
    """A hash of entries keyed by policy key (the registry, the inline queues), decoded: only
    `portal_id`'s when given, each raw JSON once while `known` keeps it; None = skipped."""
    prefix = None if portal_id is None else keys.policy_key(portal_id, "")
    out: list[T] = []
    for name, raw in entries.items():
        if prefix is not None and not _text(name).startswith(prefix):
            continue
        decoded = known.get(raw) if known is not None else None
        if decoded is None:
            decoded = decode(name, raw)
            if decoded is None:
                continue
            if known is not None:
                bounded_cache.put(known, raw, decoded, MAX_KNOWN)
        out.append(decoded)
    return out


def _decode_logged(name: Any, raw: bytes | str) -> tuple[int, Policy] | None:
    decoded = _decode(raw)
    if decoded is None:
        log.warning("registry entry %s does not validate; skipped", _text(name))
    return decoded


def _decode(raw: bytes | str) -> tuple[int, Policy] | None:
    try:
        data = json.loads(raw)
        revision = int(data["revision"])
        return revision, Policy.model_validate(data["spec"]).with_revision(revision)
    except (ValueError, KeyError, TypeError, ValidationError):
        return None


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _retrieve(future: asyncio.Future[Any]) -> None:
    if not future.cancelled():
        future.exception()


# --- the in-process index -------------------------------------------------------------------------
class PolicyIndex:
    """Every active policy, in memory, with the resolution rules."""

    def __init__(self, redis: Any = None) -> None:
        self.redis = redis
        self.revision = -1
        self._look: asyncio.Future[bool] | None = None
        self._look_started = -MIN_LOOK_GAP_S
        self._loading = asyncio.Lock()
        self._by_key: dict[str, Policy] = {}
        self._by_action: dict[tuple[int, int], Policy] = {}
        self._by_portal: dict[int, list[Policy]] = {}

    @classmethod
    def from_policies(cls, policies: Iterable[Policy]) -> PolicyIndex:
        index = cls()
        index.replace(policies)
        return index

    def replace(self, policies: Iterable[Policy]) -> None:
        by_key: dict[str, Policy] = {}
        by_action: dict[tuple[int, int], Policy] = {}
        by_portal: dict[int, list[Policy]] = {}
        for p in sorted(policies, key=lambda p: (p.portal_id, p.name)):
            by_key[p.key] = p
            by_portal.setdefault(p.portal_id, []).append(p)
            if p.action_id is not None:
                by_action.setdefault((p.portal_id, p.action_id), p)
        self._by_key, self._by_action, self._by_portal = by_key, by_action, by_portal

    async def load(self) -> None:
        # One at a time: two overlapping loads could finish out of order, the older last.
        async with self._loading:
            revision, policies = await registry_load(self.redis)
            self.replace(policies)
            self.revision = revision

    async def refresh(self) -> bool:
        """Reload if the registry changed since the last load; True if it did."""
        revision = int(await self.redis.get(keys.REGISTRY_REV) or 0)
        if revision == self.revision:
            return False
        await self.load()
        return True

    async def refresh_since(self, since: float | None = None) -> None:
        """Refresh with a read of the registry that started at or after `since` (monotonic
        seconds; default now), so whatever was written before `since` is in memory afterwards.

        Single-flight and rate-limited: callers join a read in flight if it started late
        enough, else wait for it and the gap, and the first of them starts the next read for
        all. A failed read raises in every caller that joined it (the webhook answers 503)."""
        since = time.monotonic() if since is None else since
        while True:
            look = self._look
            if look is not None and self._look_started >= since:
                await asyncio.shield(look)
                return
            if look is not None and not look.done():
                # Started before `since`: it may miss what the caller needs. Wait, then look again.
                await asyncio.wait([look])
                continue
            gap = self._look_started + MIN_LOOK_GAP_S - time.monotonic()
            if gap > 0:
                await asyncio.sleep(gap)
                continue
            self._look_started = time.monotonic()
            self._look = asyncio.ensure_future(self.refresh())
            # Nobody may await it (a caller cancelled): keep its failure out of the loop's log.
            self._look.add_done_callback(_retrieve)

    # --- queries ---------------------------------------------------------------------------------
    def get(self, portal_id: int, name: str) -> Policy | None:
        return self._by_key.get(keys.policy_key(portal_id, name))

    def policies(self, portal_id: int | None = None) -> list[Policy]:
        if portal_id is None:
            return list(self._by_key.values())
        return list(self._by_portal.get(portal_id, []))

    def resolve(
        self, portal_id: int, action_definition_id: int | None, policy_name: str | None
    ) -> Policy | None:
        if policy_name:
            named = self.get(portal_id, policy_name.strip())
            if named is not None:
                return named
        if action_definition_id is not None:
            by_action = self._by_action.get((portal_id, action_definition_id))
            if by_action is not None:
                return by_action
        portal_default = self.get(portal_id, DEFAULT_POLICY_NAME)
        if portal_default is not None:
            return portal_default
        global_default = self.get(GLOBAL_PORTAL, DEFAULT_POLICY_NAME)
        if global_default is not None and portal_id != GLOBAL_PORTAL:
            return global_default.for_portal(portal_id)
        return global_default
