"""Operator cost: what keeping N policies in Redis costs the operator, per policy.

Runs the operator's own engine calls (`OwnedPolicies`, the same code the kopf handlers and the
local reconciler use) against a real redis-server, without Kubernetes (its cost is the API
server's, not ours): first apply, an idempotent re-apply (what every resume after a restart
does), the Redis-loss check the watch runs every OPERATOR_CHECK_INTERVAL (one pipelined round
trip for all policies), restoring everything after a FLUSHALL, and reading each policy's status
figures (what the status timer does every OPERATOR_STATUS_INTERVAL). Prints a table; never
pass/fail.

    .venv/bin/python bench/operator.py [--policies 100 1000]
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import platform
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from throttle.engine.policy import Policy
from throttle.engine.queue import Queue
from throttle.operator.owned_policies import OwnedPolicies
from throttle_dev.localenv import RedisServer


def policies(n: int) -> list[Policy]:
    return [
        Policy.model_validate(
            {
                "name": f"p{i}",
                "portalId": 1000 + i % 50,
                "rate": {"limit": 10 + i % 90, "period": "1m", "burst": i % 5},
                "dailyCap": {"limit": 5000, "timeZone": "America/New_York"} if i % 3 == 0 else None,
            }
        )
        for i in range(n)
    ]


async def timed(fn: Callable[[], Awaitable[Any]]) -> float:
    start = time.perf_counter()
    await fn()
    return time.perf_counter() - start


async def run(n: int, redis: Any) -> list[tuple[str, int, float]]:
    await redis.flushall()
    owned = OwnedPolicies(Queue(redis))
    items = policies(n)

    async def apply_all() -> None:
        for p in items:
            await owned.apply(f"ns/{p.name}", "", p)

    async def stats_all() -> None:
        for p in items:
            await owned.figures(p)

    rows = [("first apply", n, await timed(apply_all))]
    rows.append(("re-apply, unchanged (resume)", n, await timed(apply_all)))
    rows.append(("loss check, nothing lost", n, await timed(owned.missing)))
    await redis.flushall()
    restored: list[Any] = []

    async def restore() -> None:
        restored.extend(await owned.restore_missing())

    rows.append(("restore after FLUSHALL", n, await timed(restore)))
    assert len(restored) == n
    rows.append(("status figures", n, await timed(stats_all)))
    return rows


async def main(sizes: list[int]) -> None:
    with tempfile.TemporaryDirectory() as folder:
        server = RedisServer(Path(folder)).start()
        redis = server.client()
        try:
            table = Table(
                "operation", "policies", "total ms", "µs per policy",
                title=f"Operator engine calls ({platform.python_version()}, Redis local)",
            )  # fmt: skip
            for n in sizes:
                for name, count, seconds in await run(n, redis):
                    table.add_row(
                        name, str(count), f"{seconds * 1000:.1f}", f"{seconds / count * 1e6:.0f}"
                    )
            Console().print(table)
        finally:
            await redis.aclose()
            server.stop()


if __name__ == "__main__":
    logging.disable(logging.WARNING)  # one "restored" warning per policy is the point, not news
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--policies", type=int, nargs="+", default=[100, 1000])
    asyncio.run(main(parser.parse_args().policies))
