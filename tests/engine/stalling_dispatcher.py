"""A dispatcher process whose completer never returns: the test SIGKILLs it while it holds
leases. Usage: python -m tests.engine.stalling_dispatcher REDIS_URL SHARD LEASE_SECONDS"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Sequence

import redis.asyncio as aioredis
from prometheus_client import CollectorRegistry

from throttle.dispatcher.complete import CompletionResult
from throttle.dispatcher.drain import Dispatcher
from throttle.engine.queue import Queue, Released
from throttle.metrics import Metrics


class Stalls:
    async def complete(self, portal_id: int, items: Sequence[Released]) -> CompletionResult:
        print(f"holding {len(items)}", flush=True)
        await asyncio.sleep(3600)
        return CompletionResult()


async def main(url: str, shard: int, lease: float) -> None:
    queue = Queue(aioredis.Redis.from_url(url), lease_seconds=lease)
    dispatcher = Dispatcher(queue, Stalls(), Metrics(CollectorRegistry()))
    while True:
        await dispatcher.step([shard])
        await asyncio.sleep(0.01)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], int(sys.argv[2]), float(sys.argv[3])))
