"""`throttle status`: every policy's queue at a glance, straight from Redis.

One row per active policy and inline queue: its rate, what is queued and in flight, how long the
oldest execution has waited, what was released (in total and today), when the current queue
will have drained at the policy's rate (window, daily cap and pause considered, by the same pure
arithmetic the webhook uses for `overflow`), and its state: why it is, or is not, releasing now.
Read-only: it never changes a queue. The demo and the console's overview read their live figures
through the same `StatusReader`, and `status_json` is the one shape `throttle status --json` and
the console's `queues.json` print.

The state is judged on the facts the releases are decided on, in the same order: take.lua's
(the pause, the schedule window now, the daily cap of each queue today) and then the
dispatcher's for the portal (a HubSpot hold after a 429, the portal's API budget spent in the
rolling window, no installation with tokens in the webhook's mirror of the installs).

Fast for a portal with 1,000 queues: five round trips (the registry's revision and entries, the
inline queues, one `stats` call per shard carrying the daily counts too, the HubSpot facts),
and decoded policies kept by their raw JSON between reads.
"""

from __future__ import annotations

import asyncio
import json
import math
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal
from zoneinfo import ZoneInfo

from rich.console import Console
from rich.live import Live
from rich.table import Table

from throttle.engine import keys
from throttle.engine.calendars import in_window, local_day
from throttle.engine.forecast import projected_wait
from throttle.engine.inline import is_inline
from throttle.engine.inline_index import inline_load
from throttle.engine.policy import Policy
from throttle.engine.policy_index import registry_load
from throttle.engine.queue import PolicyStats, Queue
from throttle.engine.redis_client import redis_client
from throttle.settings import Settings

QueueState = Literal[
    "releasing", "idle", "paused", "outside_window", "daily_cap_reached", "waiting_for_hubspot"
]
STATE_LABELS: dict[str, str] = {
    "releasing": "releasing",
    "idle": "idle",
    "paused": "paused",
    "outside_window": "outside its window",
    "daily_cap_reached": "daily cap reached",
    "waiting_for_hubspot": "waiting for HubSpot",
}
"""Each state as people read it (the table here, the console's cells)."""


@dataclass(frozen=True)
class StatusRow:
    portal_id: int
    name: str
    kind: Literal["policy", "inline"]
    rate: str
    paused: bool
    state: QueueState
    queued: int
    in_flight: int
    oldest_wait_s: float
    released_total: int
    released_today: int | None
    completed_total: int
    failed_total: int
    drain_s: float
    """Seconds until the current queue is released (inf: paused, or not within the horizon)."""


@dataclass(frozen=True)
class CapDay:
    """A capped policy's day so far: released today over its queues, and whether every queue
    that holds executions has reached the cap (so nothing goes before local midnight)."""

    released_today: int
    reached: bool


@dataclass(frozen=True)
class HubSpotBudgetTerms:
    """The portals' API budgets as the dispatcher's `PortalBudget` takes calls from them."""

    limit: int = 100
    window_s: float = 10.0
    overrides: Mapping[int, int] = field(default_factory=dict)

    def limit_for(self, portal_id: int) -> int:
        return self.overrides.get(portal_id, self.limit)


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


def queue_state(
    policy: Policy,
    stats: PolicyStats,
    now: float,
    cap_reached: bool = False,
    hubspot_waiting: bool = False,
) -> QueueState:
    """Why the queue is or is not releasing now: take.lua's checks in take.lua's order (pause,
    window, daily cap; those only matter while something is queued), then the dispatcher's for
    the portal, which hold back what was released too."""
    if policy.paused:
        return "paused"
    if stats.depth == 0 and stats.in_flight == 0:
        return "idle"
    if stats.depth > 0:
        if policy.schedule is not None and not in_window(policy.schedule, now):
            return "outside_window"
        if cap_reached:
            return "daily_cap_reached"
    if hubspot_waiting:
        return "waiting_for_hubspot"
    return "releasing"


def row_from_stats(
    policy: Policy,
    stats: PolicyStats,
    now: float,
    cap_day: CapDay | None = None,
    hubspot_waiting: bool = False,
) -> StatusRow:
    drain = 0.0 if stats.depth == 0 else projected_wait(policy, stats.depth, now)
    reached = cap_day is not None and cap_day.reached
    return StatusRow(
        portal_id=policy.portal_id,
        name=policy.name,
        kind="inline" if is_inline(policy.name) else "policy",
        rate=describe_rate(policy),
        paused=policy.paused,
        state=queue_state(policy, stats, now, reached, hubspot_waiting),
        queued=stats.depth,
        in_flight=stats.in_flight,
        oldest_wait_s=stats.oldest_age_seconds,
        released_total=stats.released,
        released_today=None if cap_day is None else cap_day.released_today,
        completed_total=stats.acked,
        failed_total=stats.failed + stats.expired,
        drain_s=drain,
    )


def cap_day(policy: Policy, stats: PolicyStats, now: float) -> CapDay | None:
    """A capped policy's day from its queues' counts (None: no daily cap). take.lua counts the
    cap per queue (a PerWorkflow policy caps each workflow's queue), in the local day of the
    cap's time zone."""
    if policy.daily_cap is None:
        return None
    today = local_day(ZoneInfo(policy.daily_cap.time_zone), now)
    counts = [(count if day == today else 0, depth) for day, count, depth in stats.queue_days]
    holding = [count for count, depth in counts if depth > 0]
    return CapDay(
        released_today=sum(count for count, _depth in counts),
        reached=bool(holding) and all(c >= policy.daily_cap.limit for c in holding),
    )


def status_json(rows: Iterable[StatusRow]) -> dict[str, Any]:
    """What `throttle status --json` prints and the console's `queues.json` answers: the rows'
    raw figures, `drain_s` null when never (paused, or beyond the horizon) and
    `released_today` null when the policy has no daily cap."""
    return {
        "queues": [
            {
                "portal_id": row.portal_id,
                "name": row.name,
                "kind": row.kind,
                "rate": row.rate,
                "paused": row.paused,
                "state": row.state,
                "queued": row.queued,
                "in_flight": row.in_flight,
                "oldest_wait_s": round(row.oldest_wait_s, 3),
                "released_total": row.released_total,
                "released_today": row.released_today,
                "completed_total": row.completed_total,
                "failed_total": row.failed_total,
                "drain_s": None if math.isinf(row.drain_s) else round(row.drain_s, 3),
            }
            for row in rows
        ]
    }


class StatusReader:
    """Reads policies from the registry and their figures with the engine's `stats` script.

    Long-lived readers (the console, the demo) keep the policies they decoded, by raw JSON."""

    def __init__(self, redis: Any, budget: HubSpotBudgetTerms | None = None) -> None:
        self.redis = redis
        self.queue = Queue(redis)
        self.budget = budget or HubSpotBudgetTerms()
        self._registry_known: dict[Any, tuple[int, Policy]] = {}
        self._inline_known: dict[Any, tuple[Policy, str]] = {}

    @classmethod
    def from_settings(cls, settings: Settings) -> StatusReader:
        budget = HubSpotBudgetTerms(
            settings.hubspot_portal_budget,
            settings.hubspot_budget_window_seconds,
            settings.hubspot_budget_overrides,
        )
        return cls(redis_client(settings), budget)

    async def policies(self, portal_id: int | None = None) -> list[Policy]:
        """The registry's policies and the inline queues (named `inline.…`, engine/inline.py),
        of one portal when given."""
        (_revision, found), inline = await asyncio.gather(
            registry_load(self.redis, portal_id, self._registry_known),
            inline_load(self.redis, portal_id, self._inline_known),
        )
        found += [policy for policy, _note in inline]
        return sorted(found, key=lambda p: (p.portal_id, p.name))

    async def rows(self, portal_id: int | None = None) -> list[StatusRow]:
        return await self.rows_of(await self.policies(portal_id))

    async def rows_of(self, policies: Sequence[Policy]) -> list[StatusRow]:
        """The rows of these policies, read together: the `stats` calls (one per shard, with
        the capped policies' daily counts) and the portals' HubSpot facts, one round trip each."""
        now = time.time()
        stats, waiting = await asyncio.gather(
            self.queue.stats_many(policies, per_queue=True),
            self._hubspot_waiting({p.portal_id for p in policies}, now),
        )
        return [
            row_from_stats(p, st, now, cap_day(p, st, now), p.portal_id in waiting)
            for p, st in zip(policies, stats, strict=True)
        ]

    async def row(self, policy: Policy) -> StatusRow:
        return (await self.rows_of([policy]))[0]

    async def _hubspot_waiting(self, portals: set[int], now: float) -> set[int]:
        """The portals the dispatcher cannot complete for now: held after a 429 (the hold's TTL
        is the wait), the API budget spent within the rolling window (as
        `hubspot_budget_take.lua` counts it), or not installed with tokens according to the
        webhook's mirror of the installs (no mirror yet: not judged)."""
        ordered = sorted(portals)
        if not ordered:
            return set()
        window_ms = int(self.budget.window_s * 1000)
        since = f"({int(now * 1000) - window_ms}"
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.get(keys.INSTALLED_PORTALS)
            for portal in ordered:
                pipe.pttl(keys.hubspot_hold(portal))
                pipe.zcount(keys.hubspot_budget(portal), since, "+inf")
            found = await pipe.execute()
        installed = _installed(found[0])
        waiting = set()
        for i, portal in enumerate(ordered):
            hold_ms, calls = found[1 + 2 * i : 3 + 2 * i]
            if (
                int(hold_ms) > 0
                or int(calls) >= self.budget.limit_for(portal)
                or (installed is not None and portal not in installed)
            ):
                waiting.add(portal)
        return waiting

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


def _installed(raw: bytes | str | None) -> set[int] | None:
    """The installed portals of the webhook's mirror (`keys.INSTALLED_PORTALS`), None if none."""
    if raw is None:
        return None
    try:
        return {int(p) for p in json.loads(raw)["installed"]}
    except (ValueError, KeyError, TypeError):
        return None


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
    table.add_column("state")
    for column in ("queued", "in flight", "oldest wait", "released", "today", "drain"):
        table.add_column(column, justify="right")
    for row in rows:
        label = STATE_LABELS[row.state]
        table.add_row(
            str(row.portal_id),
            row.name,
            row.rate,
            label if row.state in ("releasing", "idle") else f"[yellow]{label}[/]",
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


async def read_json(settings: Settings, portal_id: int | None = None) -> dict[str, Any]:
    """`throttle status --json`: `status_json` of every row (of one portal when given)."""
    reader = StatusReader.from_settings(settings)
    try:
        return status_json(await reader.rows(portal_id))
    finally:
        await reader.close()


async def show(
    settings: Settings, watch: bool, interval: float, portal_id: int | None = None
) -> None:
    reader = StatusReader.from_settings(settings)
    console = Console()
    try:
        if not watch:
            console.print(status_table(await reader.rows(portal_id)))
            return
        with Live(console=console, refresh_per_second=4, screen=False) as live:
            while True:
                stamp = time.strftime("%H:%M:%S")
                rows = await reader.rows(portal_id)
                live.update(status_table(rows, f"Throttle policies — {stamp}"))
                await asyncio.sleep(interval)
    finally:
        await reader.close()
