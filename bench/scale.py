"""Scale: does a release cost the same with 1, 100 or 10,000 active policies, and how much Redis
memory does one queued execution take?

For each policy count, on a fresh Redis: the policies are reconciled (the operator's one write
path), `--queued` executions are enqueued round-robin across them (the webhook's `enqueue`), then
the engine's real dispatcher loop (`throttle.dispatcher.drain.Dispatcher`, in this process, with a
completer that completes everything at once instead of calling HubSpot) releases `--releases`
of them. Every policy's rate is generous (it never binds), so the loop runs flat out and the
cost per release is what the engine spends, not time spent waiting for a rate.

Reported per policy count:
- dispatcher CPU per release (this process' CPU time: take, completion bookkeeping, ack),
- Redis CPU per release (INFO cpu, user + sys, over the same span),
- Redis memory per queued execution: everything (queue entry, per-item metadata, the dedupe and
  rate state, and the history event still in the stream because no history writer runs here),
  and without the history streams (what stays once history writers have copied the events).

    .venv/bin/python bench/scale.py                              # 100,000 queued (quick)
    .venv/bin/python bench/scale.py --queued 1000000 --releases 200000   # the recorded run
"""

from __future__ import annotations

import argparse
import asyncio
import platform
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry
from rich.console import Console
from rich.table import Table

from throttle.dispatcher.complete import CompletionResult
from throttle.dispatcher.drain import Dispatcher
from throttle.engine.policy import Policy
from throttle.engine.queue import Queue, QueueItem, Released
from throttle.engine.registry import reconcile
from throttle.metrics import Metrics
from throttle_dev.localenv import RedisServer

CONCURRENCY = 64


class InstantCompleter:
    """Completes every callback at once: the dispatcher's own cost, without HubSpot's."""

    async def complete(self, portal_id: int, items: Sequence[Released]) -> CompletionResult:
        return CompletionResult(completed=[i.callback_id for i in items])


@dataclass
class Row:
    policies: int
    queued: int
    released: int
    seconds: float
    dispatcher_cpu_us: float
    redis_cpu_us: float
    bytes_per_item: float
    bytes_per_item_no_stream: float


async def redis_cpu(redis: Any) -> float:
    info = await redis.info("cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


async def key_bytes(redis: Any) -> tuple[int, int]:
    """(bytes of every key, bytes of the history streams) by MEMORY USAGE with all elements
    sampled — what the data costs, without the allocator's noise in `used_memory`."""
    total = streams = 0
    names = [k async for k in redis.scan_iter(count=1000)]
    for start in range(0, len(names), 1000):
        pipe = redis.pipeline(transaction=False)
        chunk = names[start : start + 1000]
        for name in chunk:
            pipe.memory_usage(name, samples=0)
        for name, size in zip(chunk, await pipe.execute(), strict=True):
            total += int(size or 0)
            if name.endswith(b":events"):
                streams += int(size or 0)
    return total, streams


def callback_id(n: int) -> str:
    """Shaped like HubSpot's (`ap-<portal>-<11 digits>-<n>-0`)."""
    return f"ap-102670506-{56776413549 + n}-7-0"


async def fill(queue: Queue, policies: list[Policy], count: int) -> None:
    gate = asyncio.Semaphore(CONCURRENCY)

    async def one(n: int) -> None:
        policy = policies[n % len(policies)]
        item = QueueItem(
            callback_id=callback_id(n),
            portal_id=policy.portal_id,
            action_definition_id=10646377,
            workflow_id=192814114,
            object_type="CONTACT",
            object_id=str(904 + n),
            policy=policy.name,
            input_fields={"policy": policy.name},
        )
        async with gate:
            await queue.enqueue(item, policy)

    for start in range(0, count, 10_000):
        await asyncio.gather(*(one(n) for n in range(start, min(start + 10_000, count))))


async def one_count(policy_count: int, queued: int, releases: int, workdir: Path) -> Row:
    import redis.asyncio as aioredis

    server = RedisServer(workdir / f"redis-{policy_count}").start()
    # A blocking pool: redis-py's default pool raises past 100 connections in use, which a
    # dispatcher settling thousands of portals' completions at once would reach.
    pool = aioredis.BlockingConnectionPool.from_url(server.url, max_connections=128, timeout=None)
    client: Any = aioredis.Redis(connection_pool=pool)
    try:
        queue = Queue(client)
        policies = [
            Policy.model_validate(
                {
                    "name": f"p{i}",
                    "portalId": 50_000_000 + i,
                    "rate": {"limit": 100_000, "period": "1s", "burst": 100_000},
                }
            )
            for i in range(policy_count)
        ]
        for start in range(0, policy_count, CONCURRENCY):
            batch = policies[start : start + CONCURRENCY]
            await asyncio.gather(*(reconcile(queue, p) for p in batch))
        before, before_streams = await key_bytes(client)
        await fill(queue, policies, queued)
        after, after_streams = await key_bytes(client)

        dispatcher = Dispatcher(queue, InstantCompleter(), Metrics(CollectorRegistry()))
        stop = asyncio.Event()
        task = asyncio.create_task(dispatcher.run(stop))
        cpu0, rcpu0, t0 = time.process_time(), await redis_cpu(client), time.monotonic()
        while dispatcher.released_total < releases and time.monotonic() - t0 < 600:
            await asyncio.sleep(0.05)
        released = dispatcher.released_total
        cpu1, rcpu1, t1 = time.process_time(), await redis_cpu(client), time.monotonic()
        stop.set()
        await task
        return Row(
            policies=policy_count,
            queued=queued,
            released=released,
            seconds=t1 - t0,
            dispatcher_cpu_us=(cpu1 - cpu0) / max(released, 1) * 1e6,
            redis_cpu_us=(rcpu1 - rcpu0) / max(released, 1) * 1e6,
            bytes_per_item=(after - before) / queued,
            bytes_per_item_no_stream=((after - after_streams) - (before - before_streams)) / queued,
        )
    finally:
        await client.aclose()
        server.stop()


async def bench(counts: list[int], queued: int, releases: int) -> list[Row]:
    rows = []
    with tempfile.TemporaryDirectory(prefix="throttle-scale-") as tmp:
        for count in counts:
            rows.append(await one_count(count, queued, releases, Path(tmp)))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--policies", default="1,100,10000", help="comma-separated counts")
    parser.add_argument("--queued", type=int, default=100_000, help="executions queued")
    parser.add_argument("--releases", type=int, default=50_000, help="releases measured")
    args = parser.parse_args()
    counts = [int(c) for c in args.policies.split(",")]
    rows = asyncio.run(bench(counts, args.queued, min(args.releases, args.queued)))
    table = Table(title=f"Scale: {args.queued:,} queued, {args.releases:,} releases measured")
    for column in (
        "active policies",
        "released",
        "releases/s",
        "dispatcher CPU µs/release",
        "Redis CPU µs/release",
        "Redis bytes/queued",
        "… without history stream",
    ):
        table.add_column(column, justify="right")
    for r in rows:
        table.add_row(
            f"{r.policies:,}",
            f"{r.released:,}",
            f"{r.released / r.seconds:,.0f}",
            f"{r.dispatcher_cpu_us:.1f}",
            f"{r.redis_cpu_us:.1f}",
            f"{r.bytes_per_item:.0f}",
            f"{r.bytes_per_item_no_stream:.0f}",
        )
    console = Console(width=140)
    console.print(table)
    console.print(
        f"machine: {platform.machine()}, {platform.python_version()}; dispatcher loop in this "
        "process, completer completes at once (no HTTP); redis-server without AOF"
    )


if __name__ == "__main__":
    main()
