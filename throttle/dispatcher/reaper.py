"""Return the executions of a dispatcher that died while holding them.

A released execution carries a lease; if its dispatcher neither acks nor requeues it before the
lease runs out (SIGKILL, OOM, a network partition), the reaper puts it back at the head of its
queue, oldest first, for another dispatcher to release. Every dispatcher runs a reaper; the
reap script is atomic per shard, so running several at once is harmless.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

from throttle import tasks
from throttle.engine.queue import Queue
from throttle.metrics import Metrics

log = logging.getLogger(__name__)


@dataclass
class LeaseReaper:
    queue: Queue
    metrics: Metrics
    interval: float = 15.0

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            await self.reap_once()
            await tasks.wait(stop, self.interval)

    async def reap_once(self) -> int:
        try:
            returned = await self.queue.reap_expired_leases()
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # Redis unreachable: next round
            log.warning("lease reaper: %s", type(exc).__name__)
            return 0
        if returned:
            self.metrics.reaped.inc(returned)
            log.warning("returned %d executions whose lease ran out to their queues", returned)
        return returned
