"""Engine benchmark: enqueue latency, releases per second with 1 and 3 dispatcher processes,
and Redis round trips per released action (from INFO commandstats deltas).

Runs its own redis-server (AOF everysec, as the chart configures) and PostgreSQL (for the
history writers each dispatcher process runs, as a pod does) in a temporary folder.
Policies are fast (the rate never limits) so the figures are the engine's own ceiling; the
completer is a no-op that accepts everything, so HubSpot is not measured here.

    .venv/bin/python bench/engine.py [--items 50000] [--policies 200] [--no-history]

Prints a table; never passes or fails on time.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis
from prometheus_client import CollectorRegistry

from throttle.dispatcher.complete import CompletionResult
from throttle.dispatcher.drain import Dispatcher
from throttle.dispatcher.history_writer import HistoryWriter
from throttle.engine import keys
from throttle.engine.policy import Policy
from throttle.engine.queue import Queue, QueueItem, Released
from throttle.engine.registry import reconcile
from throttle.history.migrations import migrate
from throttle.history.pool import create_pool
from throttle.metrics import Metrics
from throttle_dev.localenv import PostgresServer, RedisServer


def bench_policies(count: int) -> list[Policy]:
    return [
        Policy.model_validate(
            {
                "name": f"bench-{i}",
                "portalId": 1000 + i % 50,
                "rate": {"limit": 1_000_000, "period": "1s", "burst": 100_000},
            }
        )
        for i in range(count)
    ]


def bench_item(n: int, p: Policy) -> QueueItem:
    return QueueItem(
        callback_id=f"ap-{p.portal_id}-{n}",
        portal_id=p.portal_id,
        action_definition_id=42,
        workflow_id=7,
        object_type="CONTACT",
        object_id=str(n),
        input_fields={"policy": p.name},
    )


ENGINE_COMMANDS = ("cmdstat_evalsha", "cmdstat_eval", "cmdstat_script|load")
HISTORY_COMMANDS = (
    "cmdstat_xreadgroup",
    "cmdstat_xack",
    "cmdstat_xdel",
    "cmdstat_xautoclaim",
    "cmdstat_getdel",
    "cmdstat_xgroup|create",
)


async def command_calls(client: Any, names: Sequence[str] = ENGINE_COMMANDS) -> int:
    """Commands the engine sends (script calls); the watcher below uses plain HGETs/XLENs."""
    stats = await client.info("commandstats")
    return sum(int(v["calls"]) for k, v in stats.items() if k in names)


async def enqueue_all(
    client: Any, policies: Sequence[Policy], items: int, concurrency: int
) -> list[float]:
    queue = Queue(client)
    latencies: list[float] = []
    counter = iter(range(items))

    async def worker() -> None:
        for n in counter:
            p = policies[n % len(policies)]
            started = time.perf_counter()
            result = await queue.enqueue(bench_item(n, p), p)
            latencies.append(time.perf_counter() - started)
            assert result.status == "queued"

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return latencies


class Accept:
    """A completer that accepts everything at once (HubSpot is not what this measures)."""

    async def complete(self, portal_id: int, items: Sequence[Released]) -> CompletionResult:
        return CompletionResult(completed=[r.callback_id for r in items])


async def worker_main(url: str, database_url: str | None) -> None:
    """One dispatcher process (with its history writer, as in a pod): wait for "go" on stdin,
    run until told to stop."""
    client = aioredis.Redis.from_url(url)
    metrics = Metrics(CollectorRegistry())
    queue = Queue(client, events_maxlen=10_000_000)
    dispatcher = Dispatcher(queue, Accept(), metrics, max_held=20_000)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    print("ready", flush=True)
    await loop.run_in_executor(None, sys.stdin.readline)
    tasks = [asyncio.create_task(dispatcher.run(stop))]
    writer = None
    if database_url:
        dsn = database_url
        writer = HistoryWriter(client, lambda: create_pool(dsn), metrics, batch_size=4000)
        tasks.append(asyncio.create_task(writer.run(stop)))
    await loop.run_in_executor(None, sys.stdin.readline)  # "stop"
    stop.set()
    await asyncio.gather(*tasks)
    if writer is not None:
        await writer.close()
    await client.aclose()


async def release_with(
    url: str,
    client: Any,
    policies: Sequence[Policy],
    processes: int,
    items: int,
    database_url: str | None,
) -> tuple[float, int, int]:
    history = ["--database-url", database_url] if database_url else []
    workers = [
        subprocess.Popen(
            [sys.executable, __file__, "--worker", url, *history],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        for _ in range(processes)
    ]
    for w in workers:
        assert w.stdout is not None
        assert w.stdout.readline().strip() == "ready"
    calls_before = await command_calls(client)
    history_before = await command_calls(client, HISTORY_COMMANDS)
    started = time.perf_counter()
    for w in workers:
        assert w.stdin is not None
        w.stdin.write("go\n")
        w.stdin.flush()
    while True:
        pipe = client.pipeline(transaction=False)
        for p in policies:
            pipe.hget(keys.stats(p.key), "acked")
        counts = await pipe.execute()
        if sum(int(c or 0) for c in counts) >= items:
            break
        await asyncio.sleep(0.05)
    elapsed = time.perf_counter() - started
    calls = await command_calls(client) - calls_before
    while database_url:  # wait for the history writers to drain every shard's stream
        pipe = client.pipeline(transaction=False)
        for shard in range(keys.SHARDS):
            pipe.xlen(keys.events(shard))
        if sum(await pipe.execute()) == 0:
            break
        await asyncio.sleep(0.1)
    history_calls = await command_calls(client, HISTORY_COMMANDS) - history_before
    for w in workers:
        assert w.stdin is not None
        w.stdin.write("stop\n")
        w.stdin.flush()
    for w in workers:
        w.wait(30)
    return elapsed, calls, history_calls


async def bench(items: int, policy_count: int, with_history: bool) -> None:
    folder = Path(tempfile.mkdtemp(prefix="throttle-bench-"))
    server = RedisServer(folder, appendonly=True).start()
    postgres = PostgresServer(folder / "postgres").start() if with_history else None
    try:
        client = server.client()
        policies = bench_policies(policy_count)
        latency_rows = []
        for concurrency in (1, 16):
            await client.flushall()
            queue = Queue(client)
            for p in policies:
                await reconcile(queue, p)
            count = min(items, 5000 * concurrency)
            started = time.perf_counter()
            samples = await enqueue_all(client, policies, count, concurrency)
            latency_rows.append((concurrency, samples, count / (time.perf_counter() - started)))
        rows = []
        for processes in (1, 3):
            await client.flushall()
            queue = Queue(client)
            for p in policies:
                await reconcile(queue, p)
            before = await command_calls(client)
            latencies = await enqueue_all(client, policies, items, concurrency=16)
            enqueue_calls = await command_calls(client) - before
            database_url = None
            if postgres is not None:
                database_url = postgres.create_database(f"bench{processes}")
                await migrate(database_url)
            elapsed, calls, history_calls = await release_with(
                server.url, client, policies, processes, items, database_url
            )
            rows.append((processes, latencies, enqueue_calls, elapsed, calls, history_calls))
        await client.aclose()
    finally:
        server.stop()
        if postgres is not None:
            postgres.stop()

    print(f"\nEngine benchmark: {items} executions over {policy_count} policies, 50 portals")
    print("Redis 7.0 (AOF everysec) on this machine; no-op completer\n")
    print("| enqueuers | enqueues | p50 ms | p99 ms | enqueues/s |")
    print("| ---: | ---: | ---: | ---: | ---: |")
    for concurrency, samples, rate in latency_rows:
        ordered = sorted(samples)
        print(
            f"| {concurrency} | {len(ordered)} | {statistics.median(ordered) * 1000:.2f} "
            f"| {ordered[int(len(ordered) * 0.99) - 1] * 1000:.2f} | {rate:,.0f} |"
        )
    print("\nReleases (queues filled first by 16 enqueuers; RT = Redis commands per action):\n")
    header = (
        "| dispatcher processes | releases/s | per process | enqueue RT/action "
        "| take+ack RT/action | history RT/action | total RT/action |"
    )
    print(header)
    print("| ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for processes, _latencies, enqueue_calls, elapsed, calls, history_calls in rows:
        rate = items / elapsed
        history = f"{history_calls / items:.3f}" if with_history else "not run"
        print(
            f"| {processes} | {rate:,.0f} | {rate / processes:,.0f} "
            f"| {enqueue_calls / items:.2f} | {calls / items:.3f} | {history} "
            f"| {(enqueue_calls + calls + history_calls) / items:.2f} |"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=50_000)
    parser.add_argument("--policies", type=int, default=200)
    parser.add_argument(
        "--no-history", action="store_true", help="Skip PostgreSQL and the history writers."
    )
    parser.add_argument("--worker", metavar="REDIS_URL", help=argparse.SUPPRESS)
    parser.add_argument("--database-url", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        asyncio.run(worker_main(args.worker, args.database_url))
    else:
        asyncio.run(bench(args.items, args.policies, not args.no_history))


if __name__ == "__main__":
    main()
