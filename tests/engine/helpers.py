"""Small builders shared by the engine tests."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from typing import Any

from prometheus_client import CollectorRegistry

from throttle.dispatcher.complete import CompletionResult
from throttle.dispatcher.drain import Dispatcher
from throttle.engine import keys
from throttle.engine.policy import Policy
from throttle.engine.queue import Queue, QueueItem, Released
from throttle.metrics import Metrics


def policy(name: str = "p", portal: int = 7, **spec: Any) -> Policy:
    body: dict[str, Any] = {"name": name, "portalId": portal, "rate": {"limit": 10, "period": "1s"}}
    body.update(spec)
    return Policy.model_validate(body)


def item(cb: str, portal: int = 7, workflow: int | None = 1, **kw: Any) -> QueueItem:
    return QueueItem(
        callback_id=cb,
        portal_id=portal,
        action_definition_id=kw.pop("action", 100),
        workflow_id=workflow,
        object_type="CONTACT",
        object_id=kw.pop("object_id", "1"),
        **kw,
    )


class RecordingCompleter:
    """A real Completer for tests: records every completion, optionally failing some."""

    def __init__(self, fail: dict[str, str] | None = None, retry_once: set[str] | None = None):
        self.completed: list[Released] = []
        self.calls: list[tuple[int, int]] = []
        self.fail = fail or {}
        self.retry_once = set(retry_once or ())

    async def complete(self, portal_id: int, items: Sequence[Released]) -> CompletionResult:
        self.calls.append((portal_id, len(items)))
        result = CompletionResult()
        for r in items:
            if r.callback_id in self.fail:
                result.failed[r.callback_id] = self.fail[r.callback_id]
            elif r.callback_id in self.retry_once:
                self.retry_once.discard(r.callback_id)
                result.retry.append(r.callback_id)
            else:
                self.completed.append(r)
                result.completed.append(r.callback_id)
        return result

    def release_times(self) -> list[int]:
        """When the rate let each one go (microseconds, Redis' offset clock), in order."""
        return sorted(r.released_at_us for r in self.completed)


def max_in_window(times_us: Sequence[int], period_s: float) -> int:
    """The most releases in any half-open window [t, t + period)."""
    period = round(period_s * 1_000_000)
    ordered = sorted(times_us)
    best = j = 0
    for i, t in enumerate(ordered):
        while j < len(ordered) and ordered[j] < t + period:
            j += 1
        best = max(best, j - i)
    return best


class Simulation:
    """Dispatchers driven on Redis' clock by the test: time jumps from event to event.

    Every Queue shifts Redis' TIME by the same offset, so the scripts see a clock that the test
    moves (no sleeping); each step runs one take on every dispatcher concurrently, then waits
    for their completions. Arrivals are (epoch seconds, item, policy).
    """

    def __init__(self, redis: Any, policies: Sequence[Policy], dispatchers: int = 1) -> None:
        self.completer = RecordingCompleter()
        self.queues = [Queue(redis, lease_seconds=3600) for _ in range(dispatchers)]
        self.dispatchers = [
            Dispatcher(q, self.completer, Metrics(CollectorRegistry())) for q in self.queues
        ]
        self.shards = sorted({keys.shard_of(p.key) for p in policies})
        self.policies = policies

    def set_clock(self, epoch: float) -> None:
        """Make Redis' clock (as the scripts see it) read `epoch` now, plus a hair."""
        offset = round((epoch - time.time()) * 1000 + 0.3)
        for q in self.queues:
            q.time_offset_ms = offset

    async def step(self) -> None:
        await asyncio.gather(*(d.step(self.shards) for d in self.dispatchers))
        await asyncio.gather(*(d.wait_idle() for d in self.dispatchers))

    def next_due(self) -> float | None:
        dues = [d.next_due_at for d in self.dispatchers if d.next_due_at is not None]
        return min(dues, default=None)

    async def run(
        self,
        arrivals: Sequence[tuple[float, QueueItem, Policy]],
        start: float,
        max_steps: int,
        until: float | None = None,
    ) -> None:
        """Feed arrivals at their times and take whenever something is due, until all that
        arrived is done (or, with `until`, until the clock passes it)."""
        pending = sorted(arrivals, key=lambda a: a[0])
        expected = len(self.completer.completed) + len(pending)
        now = start
        i = 0
        for _ in range(max_steps):
            if until is not None and now >= until:
                return
            if until is None and len(self.completer.completed) >= expected and i == len(pending):
                return
            self.set_clock(now)
            while i < len(pending) and pending[i][0] <= now:
                await self.queues[0].enqueue(pending[i][1], pending[i][2])
                i += 1
            await self.step()
            candidates = [pending[i][0]] if i < len(pending) else []
            due = self.next_due()
            if due is not None:
                candidates.append(due)
            if until is not None:
                candidates.append(until)
            if not candidates:
                return
            now = max(now + 0.0001, min(candidates))
        raise AssertionError(f"not finished after {max_steps} steps")
