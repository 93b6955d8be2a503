"""The version of the Redis data layout, migrated forward by each release before it serves.

Redis holds `keys.LAYOUT`, a hash: `version` (the layout the data follows), `readable_by` (the
oldest layout whose code still works correctly on this data), and when and by what it was last
migrated. No key means layout 1: the layout of release 0.1.0, which predates the key.

Every component that touches the queues (webhook, dispatcher, operator) calls `ensure_layout`
at start, before it serves: under a Redis lock (so two new pods never migrate at once; the
second waits, then finds nothing left to do) it applies each registered migration above the
stored version up to `CURRENT_LAYOUT`, recording the version after each one, so a pod that dies
mid-migration leaves a version the next one continues from. A migration must therefore be
idempotent (it may run again after a crash) and finish within `LOCK_TIMEOUT_S`.

The rollout rule (docs/upgrading.md). During a rolling upgrade the previous release's pods run
beside the new ones on the same, already migrated data, and the previous release has no way to
notice. So every layout change must either
- stay readable and writable by the previous release (`readable_by = version - 1`): new fields
  the old code ignores, new keys it never reads, a format the old scripts parse the same way; or
- be two-phase: release N+1 learns to read the new form while still writing the old one (its
  migration changes no data); release N+2 writes the new form (`readable_by = N+1`) and migrates
  what is left. An upgrade must not skip a release with such a first phase.
A release that finds `readable_by` above its own `CURRENT_LAYOUT` (a rollback past a two-phase
change) refuses to start rather than misread the data: roll forward instead.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from throttle import tasks
from throttle.engine import keys

log = logging.getLogger(__name__)

CURRENT_LAYOUT = 2
"""The layout this code reads and writes. 1: the key layout documented in keys.py, as release
0.1.0 left it. 2: priorities (engine/priority.py): a queue's priority set, the shard's
`prioritized` set, meta's `/p<tag>` suffix."""
LOCK_TIMEOUT_S = 300.0
"""A migrating pod holds the lock at most this long (then another may take over and rerun the
idempotent step it was in)."""


@dataclass(frozen=True)
class LayoutMigration:
    """One step of the layout, from `version - 1` to `version`."""

    version: int
    summary: str
    readable_by: int
    """The oldest layout whose code works on the data once migrated: `version - 1` for a
    change the previous release reads as before; `version` (or more) only for the second phase
    of a two-phase change."""
    apply: Callable[[Any], Awaitable[None]]
    """Idempotent: called with the Redis client; may run again after a crash mid-way."""


async def _priorities(redis: Any) -> None:
    """Layout 2 adds keys and a meta suffix that only executions with a priority get: the
    queues that exist keep their lists, their order and their meta as they are."""


MIGRATIONS: tuple[LayoutMigration, ...] = (
    LayoutMigration(
        2,
        "priorities: a queue's priority set (`:pq`), the shard's `prioritized` set, meta's "
        "`/p<tag>` suffix; existing queues unchanged",
        readable_by=1,
        apply=_priorities,
    ),
)
"""Every layout step after layout 1, in order. Add one with the change that needs it."""


class LayoutTooNew(RuntimeError):
    """Redis holds data this release cannot read (it was migrated by a newer one)."""


@dataclass(frozen=True)
class LayoutState:
    version: int
    readable_by: int
    stamped: bool
    """The key exists (False: data of release 0.1.0, or an empty Redis)."""


async def read_layout(redis: Any) -> LayoutState:
    raw = await redis.hgetall(keys.LAYOUT)
    fields = {_text(k): _text(v) for k, v in raw.items()}
    if not fields:
        return LayoutState(1, 1, stamped=False)
    return LayoutState(int(fields["version"]), int(fields["readable_by"]), stamped=True)


async def ensure_layout(
    redis: Any,
    *,
    current: int = CURRENT_LAYOUT,
    migrations: Sequence[LayoutMigration] = MIGRATIONS,
    wait_s: float = LOCK_TIMEOUT_S + 30.0,
) -> list[int]:
    """Bring Redis to layout `current` before this process serves; returns the versions this
    call applied (empty when another pod did, or nothing was due). Raises LayoutTooNew when
    the data is beyond what this release can read."""
    state = await read_layout(redis)
    _check_readable(state, current)
    if state.stamped and state.version >= current:
        return []
    applied: list[int] = []
    async with redis.lock(keys.LAYOUT_LOCK, timeout=LOCK_TIMEOUT_S, blocking_timeout=wait_s):
        state = await read_layout(redis)  # another pod may have migrated meanwhile
        _check_readable(state, current)
        for step in sorted(migrations, key=lambda m: m.version):
            if not state.version < step.version <= current:
                continue
            if step.version != state.version + 1:
                raise RuntimeError(f"layout migration {state.version + 1} is missing")
            log.info("Redis layout %d -> %d: %s", state.version, step.version, step.summary)
            await step.apply(redis)
            state = LayoutState(step.version, step.readable_by, stamped=True)
            await _record(redis, state, step.summary)
            applied.append(step.version)
        if not state.stamped:
            await _record(redis, LayoutState(state.version, state.readable_by, True), "stamped")
    if applied:
        log.info("Redis layout is now %d (readable by layout %d and later)", *_pair(state))
    return applied


async def ensure_layout_when_reachable(redis: Any, stop: asyncio.Event) -> list[int]:
    """`ensure_layout`, waiting for Redis while it is unreachable (a pod that starts before
    Redis does); returns [] if `stop` is set first. LayoutTooNew is not waited out."""
    delay = 0.5
    while not stop.is_set():
        try:
            return await ensure_layout(redis)
        except (RedisConnectionError, RedisTimeoutError, OSError) as exc:
            log.warning("Redis unreachable (%s); layout check again in %.0fs", _name(exc), delay)
        await tasks.wait(stop, delay)
        delay = min(10.0, delay * 2)
    return []


def _name(exc: BaseException) -> str:
    return type(exc).__name__


def _check_readable(state: LayoutState, current: int) -> None:
    if state.readable_by > current:
        raise LayoutTooNew(
            f"Redis holds data layout {state.version}, which code of layout "
            f"{state.readable_by} or later can read; this release knows layout {current}: "
            "roll forward to the release that migrated it (docs/upgrading.md)"
        )
    if state.version > current:
        log.info(
            "Redis layout %d is newer than this release's %d and still readable by it",
            state.version,
            current,
        )


async def _record(redis: Any, state: LayoutState, summary: str) -> None:
    await redis.hset(
        keys.LAYOUT,
        mapping={
            "version": state.version,
            "readable_by": state.readable_by,
            "migrated_at": f"{time.time():.3f}",
            "migrated_by": f"{socket.gethostname()}-{os.getpid()}",
            "summary": summary,
        },
    )


def _pair(state: LayoutState) -> tuple[int, int]:
    return state.version, state.readable_by


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
