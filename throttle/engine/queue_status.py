"""`throttle status`: every policy's queue at a glance, straight from Redis.

One row per active policy and inline queue: its rate, what is queued and in flight, how long the
oldest execution has waited, what was released (in total and today), and when the current queue
will have drained at the policy's rate (window, daily cap and pause considered, by the same pure
arithmetic the webhook uses for `overflow`). Read-only: it never changes a queue. The demo reads
its live figures through the same `StatusReader`.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any
from zoneinfo import ZoneInfo

from rich.console import Console
from rich.live import Live
from rich.table import Table

from throttle.engine import keys
from throttle.engine.calendars import local_day
from throttle.engine.forecast import projected_wait
from throttle.engine.inline_index import inline_load
from throttle.engine.policy import Policy
from throttle.engine.policy_index import registry_load
from throttle.engine.queue import PolicyStats, Queue
from throttle.engine.redis_client import redis_client
from throttle.settings import Settings


@dataclass(frozen=True)
class StatusRow:
    portal_id: int
    name: str
    rate: str
    paused: bool
    queued: int
    in_flight: int
    oldest_wait_s: float
    released_total: int
    released_today: int | None
    completed_total: int
    failed_total: int
    drain_s: float
    """Seconds until the current queue is released (inf: paused, or not within the horizon)."""


def describe_rate(policy: Policy) -> str:
    period = policy.rate.period.total_seconds()
    text = f"{policy.rate.limit}/{_short(period)}"
    if policy.rate.burst:
        text += f" +{policy.rate.burst}"
    if policy.daily_cap is not None:
        text += f", ≤{policy.daily_cap.limit}/day"
    if policy.schedule is not None:
        text += ", windowed"
    return text


def _short(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return f"{seconds:g}s"


def row_from_stats(
    policy: Policy, stats: PolicyStats, now: float, today: int | None = None
) -> StatusRow:
    drain = 0.0 if stats.depth == 0 else projected_wait(policy, stats.depth, now)
    return StatusRow(
        portal_id=policy.portal_id,
        name=policy.name,
        rate=describe_rate(policy),
        paused=policy.paused,
        queued=stats.depth,
        in_flight=stats.in_flight,
        oldest_wait_s=stats.oldest_age_seconds,
        released_total=stats.released,
        released_today=today,
        completed_total=stats.acked,
        failed_total=stats.failed + stats.expired,
        drain_s=drain,
    )


class StatusReader:
    """Reads policies from the registry and their figures with the engine's `stats` script."""

    def __init__(self, redis: Any) -> None:
        self.redis = redis
        self.queue = Queue(redis)

    @classmethod
    def from_settings(cls, settings: Settings) -> StatusReader:
        return cls(redis_client(settings))

    async def policies(self) -> list[Policy]:
        """The registry's policies and the inline queues (named `inline.…`, engine/inline.py)."""
        _revision, found = await registry_load(self.redis)
        found += [policy for policy, _note in await inline_load(self.redis)]
        return sorted(found, key=lambda p: (p.portal_id, p.name))

    async def row(self, policy: Policy) -> StatusRow:
        now = time.time()
        stats = await self.queue.stats(policy)
        return row_from_stats(policy, stats, now, await self.released_today(policy, now))

    async def released_today(self, policy: Policy, now: float) -> int | None:
        """Today's count under the daily cap (the engine counts per cap day only when capped)."""
        if policy.daily_cap is None:
            return None
        today = local_day(ZoneInfo(policy.daily_cap.time_zone), now)
        total = 0
        for qid in await self.redis.smembers(keys.queues(policy.key)):
            queue_id = qid.decode() if isinstance(qid, bytes) else str(qid)
            day, count = await self.redis.hmget(
                keys.queue_state(policy.key, queue_id), "cday", "ccnt"
            )
            if day is not None and int(day) == today:
                total += int(count or 0)
        return total

    async def rows(self) -> list[StatusRow]:
        policies = await self.policies()
        return list(await asyncio.gather(*(self.row(p) for p in policies)))

    async def by_name(self, wanted: Iterable[tuple[int, str]]) -> dict[str, StatusRow | None]:
        """Rows of these (portal, name) policies; None for one not (yet) in the registry."""
        policies = {(p.portal_id, p.name): p for p in await self.policies()}
        out: dict[str, StatusRow | None] = {}
        for portal_id, name in wanted:
            policy = policies.get((portal_id, name))
            out[name] = await self.row(policy) if policy is not None else None
        return out

    async def close(self) -> None:
        await self.redis.aclose()


def _age(seconds: float) -> str:
    if math.isinf(seconds):
        return "∞"
    if seconds < 60:
        return f"{seconds:.0f}s"
    if seconds < 3600:
        return f"{seconds / 60:.1f}m"
    if seconds < 86400:
        return f"{seconds / 3600:.1f}h"
    return f"{seconds / 86400:.1f}d"


def status_table(rows: Sequence[StatusRow], title: str = "Throttle policies") -> Table:
    table = Table(title=title)
    table.add_column("portal", justify="right")
    table.add_column("policy")
    table.add_column("rate")
    for column in ("queued", "in flight", "oldest wait", "released", "today", "drain"):
        table.add_column(column, justify="right")
    for row in rows:
        table.add_row(
            str(row.portal_id),
            row.name + (" [yellow](paused)[/]" if row.paused else ""),
            row.rate,
            str(row.queued),
            str(row.in_flight),
            _age(row.oldest_wait_s) if row.queued else "-",
            str(row.released_total),
            "-" if row.released_today is None else str(row.released_today),
            _age(row.drain_s) if row.queued else "-",
        )
    if not rows:
        table.caption = "no policies in Redis (apply a ThrottlePolicy or POST /api/config)"
    return table


async def show(settings: Settings, watch: bool, interval: float) -> None:
    reader = StatusReader.from_settings(settings)
    console = Console()
    try:
        if not watch:
            console.print(status_table(await reader.rows()))
            return
        with Live(console=console, refresh_per_second=4, screen=False) as live:
            while True:
                stamp = time.strftime("%H:%M:%S")
                live.update(status_table(await reader.rows(), f"Throttle policies — {stamp}"))
                await asyncio.sleep(interval)
    finally:
        await reader.close()
