"""The drain loop: take what the rate allows from due shards, complete it per portal, settle.

Any number of dispatchers run at once: `take` is atomic per shard in Redis, so each execution
goes to one dispatcher and every policy's rate holds however many take. Within a dispatcher,
each portal has one sender task, so a slow or failing portal never holds up another, and what a
portal's takes release while its previous HubSpot call is out goes together in the next call: a
portal's API budget (about ten calls a second) buys full batches instead of one call per take.
The number of executions held at once is bounded (back-pressure), and an execution waits for at
most one call before its own, so leases never run out while items wait in memory. Fairness
across queues comes from `take` itself (a per-queue quota per call; a queue with more goes to
the back of the schedule).

SIGTERM: stop taking, let running completions finish (up to `shutdown_timeout`), hand back the
rest (requeue at the head), then exit.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from prometheus_client import CollectorRegistry
from prometheus_client.aiohttp import make_aiohttp_handler

from throttle import keys
from throttle.dispatcher.complete import Completer, CompletionResult, Released
from throttle.dispatcher.reaper import LeaseReaper
from throttle.metrics import Metrics, QueueStat
from throttle.queue import Queue
from throttle.settings import Settings

log = logging.getLogger(__name__)


@dataclass
class Dispatcher:
    queue: Queue
    completer: Completer
    metrics: Metrics
    batch: int = 500
    """Most executions one take call releases from one shard."""
    queue_quota: int = 100
    poll_seconds: float = 0.05
    min_hold: float = 0.0
    """Seconds an execution stays queued at least (HubSpot must have its BLOCK answer first)."""
    max_held: int = 5000
    """Most executions held (released, not yet settled) at once by this dispatcher."""
    retry_base: float = 1.0
    retry_max: float = 60.0
    complete_timeout: float = 30.0
    shutdown_timeout: float = 20.0
    last_loop: float = field(default_factory=time.monotonic)
    released_total: int = 0
    _held: int = 0
    _tasks: set[asyncio.Task[None]] = field(default_factory=set)
    _outbox: dict[int, list[Released]] = field(default_factory=dict)
    _senders: dict[int, asyncio.Task[None]] = field(default_factory=dict)
    _taken_at: dict[str, float] = field(default_factory=dict)
    """When this dispatcher took each execution it holds (monotonic): its lease started then."""
    _next_due: dict[int, float] = field(default_factory=dict)
    _skew: float = 0.0
    _room: asyncio.Event = field(default_factory=asyncio.Event)

    async def run(self, stop: asyncio.Event) -> None:
        loop = asyncio.get_running_loop()
        next_full_poll = 0.0
        self._room.set()
        try:
            while not stop.is_set():
                self.last_loop = time.monotonic()
                if self._held >= self.max_held:
                    self._room.clear()
                    await _wait_any(stop, self._room, seconds=1.0)
                    continue
                now = time.time() + self._skew
                if loop.time() >= next_full_poll:
                    shards: Sequence[int] = range(keys.SHARDS)
                    next_full_poll = loop.time() + self.poll_seconds
                else:
                    shards = [s for s, t in self._next_due.items() if t <= now]
                if not shards:
                    soonest = min(self._next_due.values(), default=now + self.poll_seconds)
                    pause = max(0.0, min(next_full_poll - loop.time(), soonest - now))
                    await _wait_any(stop, None, seconds=max(pause, 0.001))
                    continue
                try:
                    await self.step(shards)
                except asyncio.CancelledError:
                    raise
                except Exception as exc:  # Redis unreachable: keep trying, never exit
                    log.warning("take failed: %s", type(exc).__name__)
                    await _wait_any(stop, None, seconds=0.5)
        finally:
            await self._drain()

    async def step(self, shards: Sequence[int] | None = None) -> int:
        """One take over these shards; completions run in the background. Returns released."""
        started = time.perf_counter()
        result = await self.queue.take(
            shards,
            max_items=self.batch,
            queue_quota=self.queue_quota,
            min_hold_seconds=self.min_hold,
        )
        self.metrics.take_seconds.observe(time.perf_counter() - started)
        self._skew = result.redis_now - time.time()
        polled = range(keys.SHARDS) if shards is None else shards
        for s in polled:
            if s in result.next_due:
                self._next_due[s] = result.next_due[s]
            else:
                self._next_due.pop(s, None)
        for lag in result.lags:
            self.metrics.loop_lag.observe(lag)
        if not result.released:
            return 0
        by_portal: dict[int, list[Released]] = defaultdict(list)
        for r in result.released:
            by_portal[r.portal_id].append(r)
            self.metrics.released.labels(str(r.portal_id), r.policy).inc()
        self.released_total += len(result.released)
        taken_at = time.monotonic()
        for portal, items in by_portal.items():
            self._held += len(items)
            self._taken_at.update((r.callback_id, taken_at) for r in items)
            self._outbox.setdefault(portal, []).extend(items)
            if portal not in self._senders:
                task = asyncio.create_task(self._send(portal))
                self._senders[portal] = task
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
        return len(result.released)

    async def _send(self, portal: int) -> None:
        """The portal's one sender: complete whatever its outbox holds, until it stays empty."""
        try:
            while self._outbox.get(portal):
                wait = await self._complete(portal, self._outbox.pop(portal))
                if wait:  # the budget is spent: what waits goes with what the portal releases
                    await asyncio.sleep(wait)
        except asyncio.CancelledError:
            left = self._outbox.pop(portal, [])
            if left:
                await asyncio.shield(self.queue.requeue(left, 0.0, "dispatcher stopped"))
                self._forget(left)
            raise
        finally:
            self._senders.pop(portal, None)

    def _forget(self, items: Sequence[Released]) -> None:
        """These are settled (or handed back): no longer held by this dispatcher."""
        self._held -= len(items)
        for r in items:
            self._taken_at.pop(r.callback_id, None)
        self._room.set()

    def _keep_for_budget(
        self, items: Sequence[Released], result: CompletionResult
    ) -> list[Released]:
        """Items only waiting for the portal's budget stay here (their lease allowing), so the
        next call carries them with everything released meanwhile instead of one call each."""
        if not result.budget_spent or result.portal_stopped or not result.retry:
            return []
        now = time.monotonic()
        # Waiting, then one call of at most `complete_timeout`, must end well inside the lease.
        room = self.queue.lease_seconds - self.complete_timeout - result.retry_after - 1.0
        waiting = set(result.retry)
        keep = [
            r
            for r in items
            if r.callback_id in waiting and now - self._taken_at.get(r.callback_id, now) < room
        ]
        kept = {r.callback_id for r in keep}
        result.retry = [c for c in result.retry if c not in kept]
        return keep

    async def _complete(self, portal: int, items: list[Released]) -> float:
        """Complete and settle; returns how long to wait before the items it kept may go."""
        started = time.perf_counter()
        kept: list[Released] = []
        result = CompletionResult()
        try:
            try:
                result = await asyncio.wait_for(
                    self.completer.complete(portal, items), self.complete_timeout
                )
            except asyncio.CancelledError:
                await asyncio.shield(self.queue.requeue(items, 0.0, "dispatcher stopped"))
                raise
            except Exception as exc:
                log.warning("completing portal %s failed: %s", portal, type(exc).__name__)
                result = CompletionResult(retry=[r.callback_id for r in items])
                result.retry_after = self._backoff(items)
            self.metrics.completion_seconds.observe(time.perf_counter() - started)
            kept = self._keep_for_budget(items, result)
            if kept:
                self._outbox[portal] = kept + self._outbox.get(portal, [])
                kept_ids = {r.callback_id for r in kept}
                items = [r for r in items if r.callback_id not in kept_ids]
            try:
                await self.settle(items, result)
            except Exception as exc:  # left to the lease reaper
                log.error("portal %s: %d items unsettled (%s)", portal, len(items), exc)
        finally:
            self._forget(items)
        return result.retry_after if kept else 0.0

    def _backoff(self, items: Sequence[Released]) -> float:
        attempts = max((r.attempts for r in items), default=1)
        return float(min(self.retry_max, self.retry_base * 2 ** max(0, attempts - 1)))

    async def settle(self, items: Sequence[Released], result: CompletionResult) -> None:
        """Ack what completed, requeue what may be retried, record what failed for good."""
        by_id = {r.callback_id: r for r in items}
        completed = [by_id[c] for c in result.completed if c in by_id]
        failed = [(by_id[c], reason) for c, reason in result.failed.items() if c in by_id]
        retry = [by_id[c] for c in result.retry if c in by_id]
        accounted = {r.callback_id for r in completed} | {r.callback_id for r, _ in failed}
        accounted |= {r.callback_id for r in retry}
        rest = [r for r in items if r.callback_id not in accounted]
        if result.portal_stopped:
            failed += [(r, result.portal_stopped) for r in [*retry, *rest]]
            retry, rest = [], []
        retry += rest  # the completer said nothing about them: never lose one
        delay = max(result.retry_after, self._backoff(retry)) if retry else 0.0

        def calls() -> list[Awaitable[int]]:
            out: list[Awaitable[int]] = []
            if completed:
                out.append(self.queue.ack(completed))
            if failed:
                out.append(self.queue.fail(failed))
            if retry:
                out.append(self.queue.requeue(retry, delay, "retryable completion failure"))
            return out

        await self._settle_with_retry(calls)
        for r in completed:
            self.metrics.acked.labels(str(r.portal_id), r.policy).inc()
        for r, _reason in failed:
            kind = "stopped" if result.portal_stopped else "terminal"
            self.metrics.failed.labels(str(r.portal_id), r.policy, kind).inc()
        for r in retry:
            self.metrics.requeued.labels(str(r.portal_id), r.policy).inc()

    @property
    def next_due_at(self) -> float | None:
        """The earliest due time (Redis clock, epoch seconds) among the shards it knows."""
        return min(self._next_due.values(), default=None)

    async def wait_idle(self) -> None:
        """Wait until every completion started so far has been settled (tests, shutdown)."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    async def _settle_with_retry(self, calls: Callable[[], list[Awaitable[int]]]) -> None:
        """Ack/requeue/fail are idempotent, so a Redis blip is retried rather than leaving
        completed items to their lease (which would complete them a second time)."""
        delay = 0.1
        deadline = time.monotonic() + max(1.0, self.queue.lease_seconds / 2)
        while True:
            try:
                await asyncio.gather(*calls())
                return
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if time.monotonic() + delay > deadline:
                    log.error("could not settle completions: %s", type(exc).__name__)
                    raise
                log.warning("settling completions failed (%s); retrying", type(exc).__name__)
                await asyncio.sleep(delay)
                delay = min(2.0, delay * 2)

    async def _drain(self) -> None:
        """Let running completions finish; whatever is still held after the timeout goes back."""
        if not self._tasks:
            return
        _done, pending = await asyncio.wait(set(self._tasks), timeout=self.shutdown_timeout)
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.gather(*pending, return_exceptions=True)


async def _wait_any(stop: asyncio.Event, other: asyncio.Event | None, seconds: float) -> None:
    waiters = [asyncio.ensure_future(stop.wait())]
    if other is not None:
        waiters.append(asyncio.ensure_future(other.wait()))
    try:
        await asyncio.wait(waiters, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for w in waiters:
            w.cancel()


async def refresh_queue_metrics(
    queue: Queue, metrics: Metrics, stop: asyncio.Event, interval: float = 10.0
) -> None:
    """Keep the scrape-time queue snapshot fresh (depth, in flight, oldest age per policy)."""
    from throttle.policy_index import registry_load

    while not stop.is_set():
        try:
            _, policies = await registry_load(queue.redis)
            figures = await queue.stats_many(policies)
            metrics.queues.update(
                QueueStat(p.portal_id, p.name, s.depth, s.in_flight, s.oldest_age_seconds)
                for p, s in zip(policies, figures, strict=True)
            )
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.debug("queue metrics refresh failed: %s", type(exc).__name__)
        await _wait_any(stop, None, seconds=interval)


async def recheck_config_fault(tokens: Any, stop: asyncio.Event) -> None:
    """While HubSpot refuses the app's configuration, ask again now and then even if nothing
    waits, so the fault (and its alert) clears by itself once fixed."""
    from throttle.config_fault import RECHECK_S

    while not stop.is_set():
        await _wait_any(stop, None, seconds=RECHECK_S)
        try:
            await tokens.recheck()
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # PostgreSQL or Redis unreachable: the next round asks again
            log.debug("config fault recheck failed: %s", type(exc).__name__)


def metrics_app(
    registry: CollectorRegistry,
    healthy: Any,
    faults: Callable[[], dict[str, str]] | None = None,
) -> web.Application:
    """/metrics and /healthz for the dispatcher (and any process that is not the webhook).

    `faults` names what is wrong outside the process (the app's configuration refused by
    HubSpot): said in /healthz, but no reason to restart the process, so the status stays."""

    async def healthz(_request: web.Request) -> web.Response:
        ok, detail = healthy()
        body: dict[str, Any] = {"ok": ok, "detail": detail}
        if faults is not None:
            body["faults"] = faults()
        return web.json_response(body, status=200 if ok else 503)

    app = web.Application()
    app.router.add_get("/metrics", make_aiohttp_handler(registry))
    app.router.add_get("/healthz", healthz)
    return app


def serve(settings: Settings) -> None:
    """`throttle dispatcher`: run until SIGTERM / SIGINT."""
    asyncio.run(run_dispatcher(settings))


async def run_dispatcher(
    settings: Settings, stop: asyncio.Event | None = None, *, handle_signals: bool = True
) -> None:
    """Everything a dispatcher pod runs, until `stop` is set (or SIGTERM / SIGINT)."""
    import aiohttp

    from throttle.dispatcher.history_writer import HistoryWriter
    from throttle.dispatcher.hubspot_completer import build_completer
    from throttle.history import create_pool
    from throttle.queue import redis_from_settings

    assert settings.database_url is not None
    dsn = settings.database_url
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT) if handle_signals else ():
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)

    registry = CollectorRegistry()
    metrics = Metrics(registry)
    redis = redis_from_settings(settings)
    queue = Queue(
        redis,
        lease_seconds=settings.dispatcher_lease_seconds,
        events_maxlen=settings.history_buffer_events,
        dedupe_seconds=settings.dedupe_seconds,
    )
    pool = await _pool_with_retry(dsn, stop)
    session = aiohttp.ClientSession()
    completer = build_completer(settings, session, redis, pool, metrics)
    dispatcher = Dispatcher(
        queue,
        completer,
        metrics,
        batch=settings.dispatcher_batch,
        queue_quota=settings.dispatcher_queue_quota,
        poll_seconds=settings.dispatcher_poll_seconds,
        min_hold=settings.dispatcher_min_hold_seconds,
        # An execution waits for at most one call before its own: two calls fit in its lease.
        complete_timeout=max(5.0, settings.dispatcher_lease_seconds / 3),
    )
    writer = HistoryWriter(
        redis,
        lambda: create_pool(dsn),
        metrics,
        retention_days=settings.history_retention_days,
        uninstall_grace_days=settings.uninstall_grace_days,
    )
    reaper = LeaseReaper(queue, metrics, interval=max(0.5, settings.dispatcher_lease_seconds / 4))

    def healthy() -> tuple[bool, str]:
        age = time.monotonic() - dispatcher.last_loop
        return age < 60, f"last loop {age:.1f}s ago"

    def faults() -> dict[str, str]:
        record = completer.tokens.config_fault()
        return {"hubspot_config": record.summary()} if record is not None else {}

    runner = web.AppRunner(metrics_app(registry, healthy, faults), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, settings.host, settings.metrics_port)
    await site.start()
    log.info("dispatcher started; metrics on port %s", settings.metrics_port)
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
        await writer.close()
        await runner.cleanup()
        await session.close()
        await pool.close()
        await redis.aclose()
        log.info("dispatcher stopped")


async def _pool_with_retry(dsn: str, stop: asyncio.Event) -> Any:
    """PostgreSQL holds the OAuth tokens: without it nothing can be completed, so wait for it."""
    from throttle.history import create_pool

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
