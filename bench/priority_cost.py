"""Priority cost: Redis CPU per release of a queue whose executions carry priorities, against a
plain FIFO queue, in one run on one Redis.

Two policies, the same rate (never binding: every call releases a full batch), the same number
of executions: the FIFO queue's carry no priority field (the list, as before priorities
existed); the priority queue's carry a random level 1-9 each (all in the priority set, the
worst case: every release goes through the sorted set), or a mix of 0-9 (`--mix`, both forms
merged). Rounds alternate between the two so drift in the machine's load hits both alike.

Per release: Redis CPU in scripts (INFO commandstats usec of EVALSHA, the take and the ack),
Redis' process CPU (INFO used_cpu_user + used_cpu_sys, everything the server did, this
benchmark's INFO calls included) and Redis commands (commands inside scripts included). The
enqueue is measured the same way. Never pass/fail: it prints the figures and the ratio, for
bench/RESULTS.md ("Priority vs FIFO", the target: at most 10% more Redis CPU per release).

    .venv/bin/python bench/priority_cost.py [--actions 20000] [--rounds 4] [--batch 100] [--mix]
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import platform
import random
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from throttle.engine import keys
from throttle.engine.policy import Policy
from throttle.engine.priority import NOT_GIVEN, Priority
from throttle.engine.queue import Queue, QueueItem
from throttle_dev.localenv import RedisServer

_IDS = itertools.count()
"""Callback ids unique across rounds (a repeated id would be deduplicated, not queued)."""


@dataclass
class Counters:
    script_us: float = 0.0
    process_us: float = 0.0
    commands: float = 0.0
    done: int = 0


@dataclass
class Row:
    take: Counters = field(default_factory=Counters)
    enqueue: Counters = field(default_factory=Counters)


async def snapshot(redis: Any) -> tuple[float, float, float]:
    """(script µs, process CPU µs, commands) Redis has spent so far."""
    stats = await redis.info("commandstats")
    cpu = await redis.info("cpu")
    scripts = sum(int(stats.get(k, {}).get("usec", 0)) for k in ("cmdstat_evalsha", "cmdstat_eval"))
    commands = sum(int(v["calls"]) for k, v in stats.items() if k.startswith("cmdstat_"))
    process = (float(cpu["used_cpu_user"]) + float(cpu["used_cpu_sys"])) * 1e6
    return float(scripts), process, float(commands)


async def add(redis: Any, into: Counters, before: tuple[float, float, float], n: int) -> None:
    after = await snapshot(redis)
    into.script_us += after[0] - before[0]
    into.process_us += after[1] - before[1]
    into.commands += after[2] - before[2] - 2  # the snapshot's own INFO calls
    into.done += n


def policy(name: str) -> Policy:
    return Policy.model_validate(
        {
            "name": name,
            "portalId": 1,
            # burst = limit: the rate never binds, so every call releases a full batch
            "rate": {"limit": 1_000_000, "period": "1s", "burst": 1_000_000},
        }
    )


async def one_round(
    redis: Any, queue: Queue, p: Policy, row: Row, n: int, batch: int, levels: list[int] | None
) -> None:
    items = [
        QueueItem(
            callback_id=f"cb-{p.name}-{next(_IDS)}",
            portal_id=p.portal_id,
            action_definition_id=1,
            workflow_id=1,
            object_type="CONTACT",
            object_id=str(i),
            policy=p.name,
            priority=NOT_GIVEN if levels is None else Priority(levels[i], True),
        )
        for i in range(n)
    ]
    before = await snapshot(redis)
    for start in range(0, n, 50):  # pipelined enqueues, as many webhooks would send them
        await asyncio.gather(*(queue.enqueue(it, p) for it in items[start : start + 50]))
    await add(redis, row.enqueue, before, n)
    shard = [keys.shard_of(p.key)]
    before = await snapshot(redis)
    released = 0
    for _ in range(100 * n):  # bounded: a bug that releases nothing must not spin forever
        if released >= n:
            break
        result = await queue.take(shard, max_items=batch, queue_quota=batch)
        if result.released:
            await queue.ack(result.released)
        released += len(result.released)
    await add(redis, row.take, before, released)


async def bench(actions: int, rounds: int, batch: int, mix: bool) -> dict[str, Row]:
    import redis.asyncio as aioredis

    rng = random.Random(16)
    rows = {"FIFO (no priority field)": Row(), "priority": Row()}
    with tempfile.TemporaryDirectory() as tmp:
        server = RedisServer(Path(tmp) / "redis").start()
        try:
            redis: Any = aioredis.Redis.from_url(server.url)
            queue = Queue(redis)
            fifo, prio = policy("fifo"), policy("prio")
            for p in (fifo, prio):
                await queue.apply_policy(p)
            await one_round(redis, queue, fifo, Row(), 500, batch, None)  # warm: scripts loaded
            await one_round(redis, queue, prio, Row(), 500, batch, [5] * 500)
            per_round = actions // rounds
            low = 0 if mix else 1
            for _ in range(rounds):
                levels = [rng.randint(low, 9) for _ in range(per_round)]
                await one_round(redis, queue, fifo, rows["FIFO (no priority field)"], per_round,
                                batch, None)  # fmt: skip
                await one_round(redis, queue, prio, rows["priority"], per_round, batch, levels)
            await redis.aclose()
        finally:
            server.stop()
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--actions", type=int, default=20_000, help="releases per queue")
    parser.add_argument("--rounds", type=int, default=4, help="alternating rounds")
    parser.add_argument("--batch", type=int, default=100, help="releases per take call")
    parser.add_argument("--mix", action="store_true", help="levels 0-9 (list and set merged)")
    args = parser.parse_args()
    rows = asyncio.run(bench(args.actions, args.rounds, args.batch, args.mix))
    levels = "0-9 (list + set)" if args.mix else "1-9 (all in the set)"
    table = Table(
        title=f"Redis cost per release, take + ack {args.batch} per call, {args.actions} per "
        f"queue in {args.rounds} alternating rounds; priority levels {levels}"
    )
    for column in (
        "queue",
        "take+ack script µs",
        "take+ack Redis CPU µs",
        "take+ack cmds",
        "enqueue script µs",
        "enqueue cmds",
    ):
        table.add_column(column, justify="left" if column == "queue" else "right")
    for name, row in rows.items():
        t, e = row.take, row.enqueue
        table.add_row(
            name,
            f"{t.script_us / t.done:.2f}",
            f"{t.process_us / t.done:.2f}",
            f"{t.commands / t.done:.2f}",
            f"{e.script_us / e.done:.2f}",
            f"{e.commands / e.done:.2f}",
        )
    console = Console(width=130)
    console.print(table)
    fifo, prio = rows["FIFO (no priority field)"].take, rows["priority"].take
    script = prio.script_us / prio.done / (fifo.script_us / fifo.done) - 1
    process = prio.process_us / prio.done / (fifo.process_us / fifo.done) - 1
    console.print(
        f"priority vs FIFO, per release: Redis script CPU {script:+.1%}, Redis process CPU "
        f"{process:+.1%} (target: at most +10%)"
    )
    console.print(f"machine: {platform.machine()}, {platform.processor() or platform.system()}")


if __name__ == "__main__":
    main()
