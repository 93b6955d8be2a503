"""The console's overview of a portal with 1,000 queues: how fast it answers (target p95 < 200 ms).

Every part is a real process (`throttle_dev.stack`): Redis, PostgreSQL and the webhook with the
console on (CONSOLE_SESSION_KEY), no dispatcher (so the figures hold still). One portal gets
1,000 queues — ThrottlePolicies written by the engine's registry (as the operator writes them),
some capped, windowed or paused, and inline queues made from an action's fields (as the webhook
makes them) — each holding executions; a second portal gets a few, so reading one portal is not
reading everything. A viewer enters through a link from `throttle console-link` (a separate
process), then, one request at a time:

- `GET /console/portals/{id}`, the overview page (the table, server-rendered);
- `GET /console/portals/{id}/queues.json`, what the page polls every 2 s;
- `StatusReader.rows(portal)` in this process (the figures alone, no HTTP), and
- `throttle status --json --portal P`, a process each time (start-up included), for comparison.

Reported: p50 / p95 / p99 / max in ms, and the size of each answer. Never pass/fail: it prints a
table; the target is the issue's (p95 under 200 ms for the overview).

    .venv/bin/python bench/console_overview.py [--queues 1000] [--inline 200] [--requests 300]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import secrets
import statistics
import subprocess
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
from rich.console import Console
from rich.table import Table

from throttle.engine.calendars import DAYS
from throttle.engine.inline import decide
from throttle.engine.policy import InlineCeiling, Policy
from throttle.engine.queue import Queue, QueueItem
from throttle.engine.queue_status import StatusReader
from throttle.engine.registry import ensure_inline, reconcile
from throttle_dev.stack import Stack, StackConfig, throttle_argv

PORTAL = 4_100_000
OTHER = 4_100_001


def shape(n: int) -> dict[str, Any]:
    """A policy's spec: every tenth paused, every seventh capped, every fifth windowed."""
    spec: dict[str, Any] = {"rate": {"limit": 10 + n % 50, "period": "1m"}}
    if n % 10 == 3:
        spec["paused"] = True
    if n % 7 == 1:
        spec["dailyCap"] = {"limit": 500, "timeZone": "Europe/Paris"}
    if n % 5 == 2:
        day = DAYS[(time.gmtime().tm_wday + 1 + n % 5) % 7]
        windows = [{"days": [day], "start": "09:00", "end": "17:00"}]
        spec["schedule"] = {"timeZone": "America/New_York", "windows": windows}
    return spec


def item(callback_id: str, portal: int, policy: str, workflow: int) -> QueueItem:
    return QueueItem(
        callback_id=callback_id,
        portal_id=portal,
        action_definition_id=1,
        workflow_id=workflow,
        object_type="CONTACT",
        object_id=callback_id,
        policy=policy,
    )


async def populate(redis_url: str, queues: int, inline: int, per_queue: int) -> None:
    """`queues - inline` policies and `inline` inline queues in PORTAL, 20 policies in OTHER;
    `per_queue` executions in each (more in every ninth)."""
    import redis.asyncio as aioredis

    client = aioredis.Redis.from_url(redis_url)
    queue = Queue(client)
    try:
        held: list[tuple[Policy, int]] = []
        for n in range(queues - inline):
            body = {"name": f"wf-{n:04d}", "portalId": PORTAL, **shape(n)}
            policy = Policy.model_validate(body)
            await reconcile(queue, policy)
            held.append((policy, n))
        for n in range(20):
            policy = Policy.model_validate({"name": f"other-{n}", "portalId": OTHER, **shape(n)})
            await reconcile(queue, policy)
            held.append((policy, n))
        for n in range(inline):
            decision = decide(
                {"rate_count": str(1 + n % 30), "rate_unit": "minutes"},
                portal_id=PORTAL,
                workflow_id=900_000 + n,
                action_id=1,
                ceiling=InlineCeiling(),
                default_max_per_minute=600,
                now=time.time(),
            )
            await ensure_inline(queue, decision)
            held.append((decision.policy, n))
        for policy, n in held:
            count = per_queue * (4 if n % 9 == 0 else 1)
            for i in range(count):
                cb = f"{policy.portal_id}-{policy.name}-{i}"
                await queue.enqueue(item(cb, policy.portal_id, policy.name, 900_000 + n), policy)
    finally:
        await client.aclose()


def console_link(stack: Stack) -> str:
    done = subprocess.run(
        [
            *throttle_argv("console-link", "--portal", str(PORTAL), "--role", "viewer"),
            "--base-url",
            stack.webhook_url,
        ],
        env=stack.environment(),
        capture_output=True,
        text=True,
        check=True,
    )
    return done.stdout.strip().splitlines()[-1]


async def session_cookie(http: aiohttp.ClientSession, link: str) -> str:
    """The session cookie the link sets (sent back by hand: it is `Secure`, and this is http)."""
    async with http.get(link, allow_redirects=False) as response:
        assert response.status == 303, (response.status, await response.text())
        morsel = response.cookies["throttle_console"]
        return f"throttle_console={morsel.value}"


async def timed(
    n: int, call: Callable[[], Awaitable[int]], warmup: int = 10
) -> tuple[list[float], int]:
    """ms per call, one at a time, after `warmup` untimed calls; and the last call's size."""
    size = 0
    for _ in range(warmup):
        size = await call()
    times = []
    for _ in range(n):
        start = time.perf_counter()
        size = await call()
        times.append((time.perf_counter() - start) * 1000)
    return times, size


def percentiles(times: list[float]) -> tuple[float, float, float, float]:
    cuts = statistics.quantiles(times, n=100, method="inclusive")
    return cuts[49], cuts[94], cuts[98], max(times)


async def run(args: argparse.Namespace) -> list[tuple[str, int, list[float], int]]:
    root = Path(tempfile.mkdtemp(prefix="throttle-bench-console-"))
    config = StackConfig(
        root=root,
        dispatchers=0,
        simulator=False,
        reconciler=False,
        redis_appendonly=False,
        settings={"console_session_key": secrets.token_hex(32), "log_level": "WARNING"},
    )
    results: list[tuple[str, int, list[float], int]] = []
    with Stack(config) as stack:
        started = time.perf_counter()
        await populate(stack.redis_url, args.queues, args.inline, args.per_queue)
        print(f"populated {args.queues} queues in {time.perf_counter() - started:.1f} s")
        base = f"{stack.webhook_url}/console/portals/{PORTAL}"
        async with aiohttp.ClientSession() as http:
            headers = {"Cookie": await session_cookie(http, console_link(stack))}

            async def fetch(url: str) -> int:
                async with http.get(url, headers=headers) as response:
                    body = await response.read()
                    assert response.status == 200, (response.status, body[:300])
                    return len(body)

            page = await fetch(base)
            print(f"overview: {page} bytes")
            results.append(
                ("GET overview", args.requests, *await timed(args.requests, lambda: fetch(base)))
            )
            url = base + "/queues.json"
            async with http.get(url, headers=headers) as response:
                shown = await response.json()
            assert len(shown["queues"]) == args.queues, len(shown["queues"])
            results.append(
                ("GET queues.json", args.requests, *await timed(args.requests, lambda: fetch(url)))
            )

        reader = StatusReader.from_settings(stack.settings_object())
        try:

            async def rows() -> int:
                return len(await reader.rows(PORTAL))

            results.append(
                (
                    "StatusReader.rows(portal), in process",
                    args.requests,
                    *await timed(args.requests, rows),
                )
            )
        finally:
            await reader.close()

        argv = throttle_argv("status", "--json", "--portal", str(PORTAL))

        async def cli() -> int:
            done = await asyncio.to_thread(
                subprocess.run, argv, env=stack.environment(), capture_output=True, check=True
            )
            assert len(json.loads(done.stdout)["queues"]) == args.queues
            return len(done.stdout)

        results.append(
            (
                "throttle status --json --portal (a process)",
                args.cli_runs,
                *await timed(args.cli_runs, cli, warmup=1),
            )
        )
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--queues", type=int, default=1000, help="queues in the portal")
    parser.add_argument("--inline", type=int, default=200, help="of which inline queues")
    parser.add_argument("--per-queue", type=int, default=3, help="executions per queue")
    parser.add_argument("--requests", type=int, default=300, help="timed requests per leg")
    parser.add_argument("--cli-runs", type=int, default=10, help="timed `throttle status` runs")
    args = parser.parse_args()
    results = asyncio.run(run(args))
    table = Table(
        title=f"Console overview, one portal with {args.queues} queues "
        f"({args.inline} inline), {args.per_queue}+ executions each "
        f"({platform.python_implementation()} {platform.python_version()})"
    )
    table.add_column("what")
    table.add_column("n", justify="right")
    for column in ("p50 ms", "p95 ms", "p99 ms", "max ms", "bytes"):
        table.add_column(column, justify="right")
    for name, n, times, size in results:
        p50, p95, p99, top = percentiles(times)
        table.add_row(
            name, str(n), f"{p50:.1f}", f"{p95:.1f}", f"{p99:.1f}", f"{top:.1f}", str(size)
        )
    Console().print(table)


if __name__ == "__main__":
    main()
