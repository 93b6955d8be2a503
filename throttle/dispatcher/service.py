"""`throttle dispatcher`: everything a dispatcher pod runs, opened in order and closed in reverse.

The drain loop (`drain.py`), the history writer, the lease reaper and the queue-figures refresher
share one Redis client, one PostgreSQL pool and one HubSpot session; an `AsyncExitStack` opens
them, so a start that fails half-way closes what it had opened.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
from typing import Any

import aiohttp
from prometheus_client import CollectorRegistry

from throttle.dispatcher.drain import Dispatcher, wait_any
from throttle.dispatcher.history_writer import HistoryWriter
from throttle.dispatcher.hubspot_completer import TokenSource, build_completer
from throttle.dispatcher.reaper import LeaseReaper
from throttle.engine.inline_index import inline_load
from throttle.engine.layout import ensure_layout_when_reachable
from throttle.engine.policy_index import registry_load
from throttle.engine.queue import Queue
from throttle.engine.redis_client import redis_client, require_strict_durability
from throttle.health_server import health_server
from throttle.history.pool import create_pool
from throttle.hubspot.config_fault import RECHECK_S
from throttle.metrics import Metrics, QueueStat
from throttle.settings import Settings

log = logging.getLogger(__name__)


def serve(settings: Settings) -> None:
    """`throttle dispatcher`: run until SIGTERM / SIGINT."""
    asyncio.run(run_dispatcher(settings))


async def run_dispatcher(
    settings: Settings, stop: asyncio.Event | None = None, *, handle_signals: bool = True
) -> None:
    """Everything a dispatcher pod runs, until `stop` is set (or SIGTERM / SIGINT)."""
    assert settings.database_url is not None
    dsn = settings.database_url
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT) if handle_signals else ():
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)

    registry = CollectorRegistry()
    metrics = Metrics(registry)
    async with contextlib.AsyncExitStack() as opened:
        redis = redis_client(settings)
        opened.push_async_callback(redis.aclose)
        # Before the first take: the data must be in the layout this code reads.
        await ensure_layout_when_reachable(redis, stop)
        if settings.redis_durability == "strict":  # acks and releases as durable as BLOCKs
            await require_strict_durability(redis)
        queue = Queue(
            redis,
            lease_seconds=settings.dispatcher_lease_seconds,
            events_maxlen=settings.history_buffer_events,
            dedupe_seconds=settings.dedupe_seconds,
        )
        pool = await _pool_with_retry(dsn, stop)
        opened.push_async_callback(pool.close)
        session = await opened.enter_async_context(aiohttp.ClientSession())
        completer = build_completer(settings, session, redis, pool, metrics)
        call_seconds = completer.call_timeout_s
        dispatcher = Dispatcher(
            queue,
            completer,
            metrics,
            batch=settings.dispatcher_batch,
            queue_quota=settings.dispatcher_queue_quota,
            poll_seconds=settings.dispatcher_poll_seconds,
            min_hold=settings.dispatcher_min_hold_seconds,
            call_seconds=call_seconds,
            portal_calls=settings.hubspot_portal_concurrency,
            portal_calls_per_second=(
                settings.hubspot_portal_budget / settings.hubspot_budget_window_seconds
            ),
            partial_gap=settings.hubspot_budget_window_seconds / settings.hubspot_portal_budget,
            # A batch's requests (a 401's refresh and re-send, a split) and the budget's waits;
            # its leases are renewed meanwhile, so this need not fit in one lease (the batch
            # is still cut off a margin before the lease it is known to hold runs out).
            complete_timeout=3 * call_seconds + 5.0,
        )
        writer = HistoryWriter(
            redis,
            lambda: create_pool(dsn),
            metrics,
            retention_days=settings.history_retention_days,
            uninstall_grace_days=settings.uninstall_grace_days,
        )
        opened.push_async_callback(writer.close)
        reaper = LeaseReaper(
            queue, metrics, interval=max(0.5, settings.dispatcher_lease_seconds / 4)
        )

        def healthy() -> tuple[bool, dict[str, Any]]:
            """Alive while the loop turns. A configuration HubSpot refuses is named under
            `faults` but is no reason to restart the process, so the status stays."""
            age = time.monotonic() - dispatcher.last_loop
            record = completer.tokens.config_fault()
            faults = {"hubspot_config": record.summary()} if record is not None else {}
            return age < 60, {
                "ok": age < 60,
                "detail": f"last loop {age:.1f}s ago",
                "faults": faults,
            }

        served = await opened.enter_async_context(
            health_server(settings.host, settings.metrics_port, registry, healthy)
        )
        log.info("dispatcher started; metrics on port %s", served)
        tasks = [
            asyncio.create_task(dispatcher.run(stop)),
            asyncio.create_task(writer.run(stop)),
            asyncio.create_task(reaper.run(stop)),
            asyncio.create_task(refresh_queue_metrics(queue, metrics, stop)),
            asyncio.create_task(recheck_config_fault(completer.tokens, stop)),
        ]
        try:
            await asyncio.gather(*tasks)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
    log.info("dispatcher stopped")


async def refresh_queue_metrics(
    queue: Queue, metrics: Metrics, stop: asyncio.Event, interval: float = 10.0
) -> None:
    """Keep the scrape-time queue snapshot fresh (depth, in flight, oldest age per policy)."""
    while not stop.is_set():
        try:
            _, policies = await registry_load(queue.redis)
            policies += [policy for policy, _note in await inline_load(queue.redis)]
            figures = await queue.stats_many(policies)
            metrics.queues.update(
                QueueStat(p.portal_id, p.name, s.depth, s.in_flight, s.oldest_age_seconds)
                for p, s in zip(policies, figures, strict=True)
            )
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.debug("queue metrics refresh failed: %s", type(exc).__name__)
        await wait_any(stop, None, seconds=interval)


async def recheck_config_fault(tokens: TokenSource, stop: asyncio.Event) -> None:
    """While HubSpot refuses the app's configuration, ask again now and then even if nothing
    waits, so the fault (and its alert) clears by itself once fixed."""
    while not stop.is_set():
        await wait_any(stop, None, seconds=RECHECK_S)
        try:
            await tokens.recheck()
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # PostgreSQL or Redis unreachable: the next round asks again
            log.debug("config fault recheck failed: %s", type(exc).__name__)


async def _pool_with_retry(dsn: str, stop: asyncio.Event) -> Any:
    """PostgreSQL holds the OAuth tokens: without it nothing can be completed, so wait for it."""
    delay = 0.5
    while True:
        try:
            return await create_pool(dsn)
        except (OSError, TimeoutError) as exc:
            if stop.is_set():
                raise
            log.warning("PostgreSQL unreachable (%s); retrying in %.0fs", type(exc).__name__, delay)
            await asyncio.sleep(delay)
            delay = min(10.0, delay * 2)
