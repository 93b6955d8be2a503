"""Wake-up lateness: how late the dispatcher takes a `burst: 0` queue after it is due, and what
that costs the rate.

A `burst: 0` policy's rate state cannot catch up a late release (that would put `limit + 1` in
some window), so each release's lateness δ is lost for good: the achieved rate is
limit / (1 + δ/T) for an emission interval T. One real dispatcher (`Dispatcher.run`) on real
Redis drains a backlogged policy at 10/s and at 50/s, completing instantly; two variants run in
alternating rounds on the same server, so both see the same machine:
- baseline: the plain timed sleep until the due time (`wake_early_s=0`), Redis' clock read from
  the latest take;
- exact: the timed sleep ends `wake_early_s` early and the loop comes round until it is due;
  Redis' clock from the recent take with the shortest round trip.

The dispatcher's CPU (this process: the loop, its takes, the instant completer) shows what
coming round without sleeping costs. Lateness is measured on Redis' clock from the releases'
own times: with `burst: 0` each release is due T after the one before, so δ = gap - T.

    .venv/bin/python bench/wake.py [--seconds 20] [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import platform
import statistics
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry
from rich.console import Console
from rich.table import Table
from take_cost import fill  # bench/ is on the path: these run as scripts

from throttle.dispatcher.complete import CompletionResult
from throttle.dispatcher.drain import Dispatcher, RedisClock
from throttle.engine.policy import Policy
from throttle.engine.queue import Queue, Released
from throttle.engine.registry import reconcile
from throttle.metrics import Metrics
from throttle_dev.localenv import RedisServer

VARIANTS = {"baseline": (0.0, 0.0), "exact": (0.002, 5.0)}
"""name -> (wake_early_s, the Redis clock's max_age_s: 0 takes the latest reading)."""


class InstantCompleter:
    """HubSpot answering at once: every release completed, its Redis time recorded."""

    def __init__(self) -> None:
        self.released_us: list[int] = []

    async def complete(self, portal_id: int, items: Sequence[Released]) -> CompletionResult:
        self.released_us.extend(r.released_at_us for r in items)
        return CompletionResult(completed=[r.callback_id for r in items])


async def one_round(redis: Any, variant: str, per_second: int, seconds: float, n: int) -> dict:
    wake_early, max_age = VARIANTS[variant]
    policy = Policy.model_validate(
        {
            "portalId": 77_000 + n,
            "name": f"{variant}-{per_second}ps-{n}",
            "rate": {"limit": per_second, "period": "1s", "burst": 0},
        }
    )
    await redis.flushall()  # nothing left of the round before
    queue = Queue(redis)
    await reconcile(queue, policy)
    await fill(queue, policy, int(per_second * seconds * 1.5) + 10)
    completer = InstantCompleter()
    dispatcher = Dispatcher(
        queue,
        completer,
        Metrics(CollectorRegistry()),
        wake_early_s=wake_early,
        redis_clock=RedisClock(max_age_s=max_age),
    )
    stop = asyncio.Event()
    cpu = time.process_time()
    running = asyncio.create_task(dispatcher.run(stop))
    await asyncio.sleep(seconds)
    stop.set()
    await running
    cpu = time.process_time() - cpu
    times = sorted(completer.released_us)
    interval_us = 1_000_000 / per_second
    gaps = [(b - a) - interval_us for a, b in itertools.pairwise(times)]
    achieved = (len(times) - 1) / ((times[-1] - times[0]) / 1e6)
    return {
        "rate_error": 1 - achieved / per_second,
        "late_ms": [g / 1000 for g in gaps],
        "cpu_share": cpu / seconds,
    }


async def bench(seconds: float, rounds: int) -> list[list[str]]:
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        server = RedisServer(Path(tmp) / "redis").start()
        redis = server.client()
        try:
            n = 0
            for per_second in (10, 50):
                results: dict[str, list[dict]] = {v: [] for v in VARIANTS}
                for r in range(rounds):
                    for variant in VARIANTS:
                        n += 1
                        print(f"  {per_second}/s round {r + 1}/{rounds}: {variant} …", flush=True)
                        results[variant].append(
                            await one_round(redis, variant, per_second, seconds, n)
                        )
                for variant, runs in results.items():
                    late = sorted(x for run in runs for x in run["late_ms"])
                    error = statistics.mean(run["rate_error"] for run in runs)
                    rows.append(
                        [
                            f"{per_second}/s burst 0",
                            variant,
                            str(len(late) + len(runs)),
                            f"{statistics.mean(late):.3f}",
                            f"{late[len(late) // 2]:.3f}",
                            f"{late[int(len(late) * 0.99)]:.3f}",
                            f"{error * 100:.2f}%",
                            f"{statistics.mean(run['cpu_share'] for run in runs) * 100:.1f}%",
                        ]
                    )
        finally:
            await redis.aclose()
            server.stop()
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=20.0, help="length of one round")
    parser.add_argument("--rounds", type=int, default=3, help="rounds per variant and rate")
    args = parser.parse_args()
    console = Console(width=120)
    console.print(f"machine: {platform.node()}, {platform.processor() or platform.machine()}")
    rows = asyncio.run(bench(args.seconds, args.rounds))
    table = Table(title="Dispatcher wake-up lateness (Redis' clock), burst: 0")
    for column in ("policy", "variant", "releases", "mean δ ms", "p50 δ ms", "p99 δ ms"):
        table.add_column(column, justify="right")
    table.add_column("rate lost", justify="right")
    table.add_column("dispatcher CPU", justify="right")
    for row in rows:
        table.add_row(*row)
    console.print(table)


if __name__ == "__main__":
    main()
