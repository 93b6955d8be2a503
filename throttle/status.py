"""`throttle status`: every policy's queue at a glance, straight from Redis.

One row per active policy: its rate, what is queued and in flight, how long the oldest execution
has waited, what was released (in total and today), and when the current queue will have drained
at the policy's rate (window, daily cap and pause considered, by the same pure arithmetic the
webhook uses for `overflow`). Read-only: it never changes a queue. The demo reads its live
figures through the same `StatusReader`.
"""

from __future__ import annotations

import asyncio
import json
import math
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from rich.console import Console
from rich.live import Live
from rich.table import Table

from throttle import keys
from throttle.policy import Policy
from throttle.scripts import Scripts


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


def _int(counters: dict[str, str], name: str) -> int:
    try:
        return int(float(counters.get(name, "0")))
    except ValueError:
        return 0


def row_from_stats(policy: Policy, raw: Sequence[Any], now: float) -> StatusRow:
    """Turn the `stats` script's answer into a row (see lua/stats.lua for its layout)."""
    values = [v.decode() if isinstance(v, bytes) else str(v) for v in raw]
    now_us, depth, oldest_us = int(values[0]), int(values[1]), int(values[2])
    counters = dict(zip(values[4::2], values[5::2], strict=False))
    oldest = (now_us - oldest_us) / 1e6 if oldest_us else 0.0
    drain = 0.0 if depth == 0 else policy.projected_wait(depth, now)
    today = counters.get("released_today")
    return StatusRow(
        portal_id=policy.portal_id,
        name=policy.name,
        rate=describe_rate(policy),
        paused=policy.paused,
        queued=depth,
        in_flight=_int(counters, "inflight"),
        oldest_wait_s=max(0.0, oldest),
        released_total=_int(counters, "released"),
        released_today=int(today) if today is not None else None,
        completed_total=_int(counters, "acked"),
        failed_total=_int(counters, "failed") + _int(counters, "expired"),
        drain_s=drain,
    )


class StatusReader:
    """Reads policies from the registry and their figures with the engine's `stats` script."""

    def __init__(self, redis: Any) -> None:
        self.redis = redis
        self.scripts = Scripts(redis)

    @classmethod
    def from_url(cls, url: str, cluster: bool = False) -> StatusReader:
        if cluster:
            from redis.asyncio.cluster import RedisCluster

            return cls(RedisCluster.from_url(url))
        import redis.asyncio as aioredis

        return cls(aioredis.Redis.from_url(url))

    async def policies(self) -> list[Policy]:
        raw = await self.redis.hgetall(keys.REGISTRY)
        found = []
        for value in raw.values():
            try:
                found.append(Policy.model_validate(json.loads(value)))
            except ValueError:
                continue  # a policy this version cannot read is reported by `throttle doctor`
        return sorted(found, key=lambda p: (p.portal_id, p.name))

    async def row(self, policy: Policy) -> StatusRow:
        pkey = policy.key
        raw = await self.scripts.stats(
            keys.queues(pkey),
            keys.meta(pkey),
            keys.stats(pkey),
            now_offset_ms=0,
            prefix=keys.shard_prefix(keys.shard_of(pkey)),
            policy=pkey,
        )
        return row_from_stats(policy, raw, time.time())

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


async def show(redis_url: str, cluster: bool, watch: bool, interval: float) -> None:
    reader = StatusReader.from_url(redis_url, cluster)
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


async def release_history(
    database_url: str, policies: Sequence[str]
) -> dict[str, list[tuple[float, float]]]:
    """(received, released) epoch seconds of every released execution of these policies."""
    import asyncpg

    conn = await asyncpg.connect(database_url)
    try:
        rows = await conn.fetch(
            "SELECT policy, extract(epoch FROM received_at)::float8 AS received, "
            "extract(epoch FROM released_at)::float8 AS released FROM action_executions "
            "WHERE released_at IS NOT NULL AND policy = ANY($1::text[])",
            list(policies),
        )
    finally:
        await conn.close()
    out: dict[str, list[tuple[float, float]]] = {name: [] for name in policies}
    for row in rows:
        out.setdefault(row["policy"], []).append((row["received"], row["released"]))
    return out
