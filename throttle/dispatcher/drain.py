"""The drain loop: take what the rate allows from due shards, complete it per portal, settle.

Any number of dispatchers run at once: `take` is atomic per shard in Redis, so each execution
goes to one dispatcher and every policy's rate holds however many take. Within a dispatcher,
each portal has one sender task, so a slow or failing portal never holds up another, and what a
portal's takes release while its previous HubSpot call is out goes together in the next call: a
portal's API budget (about ten calls a second) buys full batches instead of one call per take.
Calls, not callbacks, are what the budget counts, so a batch short of HubSpot's 100 does not go
sooner than the budget's mean spacing after the portal's previous call from this dispatcher
(`partial_gap`), filling meanwhile: partial batches never spend a portal's calls faster than its
budget refills them. Spent faster (a trickle of releases sent as it comes), the budget's window
runs dry early and then frees its calls in the same bunches, window after window; at each bunch
only what the dispatcher holds (`max_held`) goes in full batches and the rest of the bunch's
calls carry a few executions each, so a portal fed above its ceiling stayed near half of it.
The number of executions held at once is bounded (back-pressure). Fairness across queues comes
from `take` itself (a per-queue quota per call; a queue with more goes to the back of the
schedule).

Each batch (one HubSpot request) is settled in Redis the moment HubSpot answers it, before the
next goes: a batch HubSpot accepted is acknowledged whatever happens to the ones after it, so it
is never handed back and sent a second time. Leases are fenced: each is held under the
execution's attempt number, and what a dispatcher whose lease ran out settles or renews
changes nothing once another has taken the execution. So that this never happens while a
request is out, no request outlives the lease on what it sends: a batch's leases are renewed
to a full lease just before it goes (a request's deadline, HUBSPOT_COMPLETION_TIMEOUT_SECONDS,
fits in a lease with a margin), the leases of everything held are renewed every third of a
lease while the dispatcher runs, and a batch's completion is cancelled a margin before the
lease it is known to hold ends (the deadline moves on with each renewal). A batch whose
outcome is unknown (no answer in time, or stopped while the request was out) goes back to its
queue, never to "failed": a re-send is answered "already completed", recorded as completed.

A take leases no more than one portal's sender can complete within a lease if every request
takes its whole deadline (`Dispatcher.lease_capacity`), so what waits in an outbox behind slow
answers is not held for many leases.

SIGTERM: stop taking, send no new batch, let the requests out finish (up to `shutdown_timeout`),
hand back the rest (requeue at the head), then exit.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

from throttle import tasks
from throttle.dispatcher.complete import Completer, CompletionResult
from throttle.engine import keys
from throttle.engine.queue import Queue, Released
from throttle.metrics import Metrics
from throttle.settings import lease_margin

log = logging.getLogger(__name__)

ALREADY_COMPLETED_NOTE = "HubSpot reported it already completed (an earlier request went through)"
"""History's note on an execution a re-sent completion found completed: completed, not failed."""


@dataclass
class RedisClock:
    """Redis' clock as read from here, to wake when a queue is due on it. NTP's rule: of the
    recent takes, the one with the shortest round trip dates Redis' reading best (its midpoint);
    a reading from a slow round trip would make every wake-up late by half of it."""

    skew: float = 0.0
    """Redis' clock minus this process's (seconds)."""
    max_age_s: float = 5.0
    _rtt: float = float("inf")
    _at: float = 0.0

    def sample(self, redis_now: float, sent: float, answered: float) -> None:
        rtt = answered - sent
        if redis_now <= 0:  # nothing was read (no shard asked)
            return
        if rtt <= self._rtt or answered - self._at > self.max_age_s:
            self.skew = redis_now - (sent + answered) / 2
            self._rtt, self._at = rtt, answered


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
    send_batch: int = 100
    """Most executions per completer call: one HubSpot batch request, settled on its own."""
    call_seconds: float = 10.0
    """The longest one HubSpot request may take (HUBSPOT_COMPLETION_TIMEOUT_SECONDS): what a
    take may lease is what requests this long complete within a lease."""
    portal_calls: int = 1
    """HubSpot calls of one portal out at once, all pods (HUBSPOT_PORTAL_CONCURRENCY)."""
    portal_calls_per_second: float = 10.0
    """One portal's API budget (HUBSPOT_PORTAL_BUDGET per HUBSPOT_BUDGET_WINDOW_SECONDS)."""
    complete_timeout: float = 30.0
    """The longest one batch's completion may take, all its requests together (a 401's refresh
    and re-send, a refused batch split): past it, or a margin before the lease it is known to
    hold ends if that comes first, the batch's outcome is unknown and it goes back to its
    queue. The batches after it are not touched."""
    partial_gap: float = 0.0
    """Seconds a batch short of `send_batch` waits after the portal's previous call from this
    dispatcher, filling meanwhile (a full one goes at once): the budget's mean spacing,
    HUBSPOT_BUDGET_WINDOW_SECONDS / HUBSPOT_PORTAL_BUDGET. 0: partial batches go at once."""
    shutdown_timeout: float = 20.0
    wake_early_s: float = 0.002
    """The timed sleep until a queue is due ends this long before it, and the dispatcher comes
    round without sleeping for the rest: a timed sleep ends up to a millisecond late (epoll
    counts whole milliseconds), and with `burst: 0` every release's lateness is lost from the
    rate for good (bench/wake.py measures it; 0 is the plain timed sleep)."""
    last_loop: float = field(default_factory=time.monotonic)
    released_total: int = 0
    _held: int = 0
    _tasks: set[asyncio.Task[None]] = field(default_factory=set)
    _outbox: dict[int, list[Released]] = field(default_factory=dict)
    _senders: dict[int, asyncio.Task[None]] = field(default_factory=dict)
    _last_call: dict[int, float] = field(default_factory=dict)
    """When (monotonic) each portal's latest batch left its outbox."""
    _full: dict[int, asyncio.Event] = field(default_factory=dict)
    """Set when a portal's outbox holds a full batch: a partial one waiting for it goes at once."""
    _holding: dict[str, Released] = field(default_factory=dict)
    """Every execution this dispatcher holds (released to it, not settled), by callback id."""
    _lease_until: dict[str, float] = field(default_factory=dict)
    """Until when (monotonic, conservatively) each held execution's lease is known to last."""
    _renewing: bool = False
    """The lease renewer runs (`run`): what waits in an outbox keeps its lease."""
    _in_flight: dict[int, _InFlight] = field(default_factory=dict)
    """Batches being completed, by id: their deadlines move with their leases' renewals."""
    _stopping: bool = False
    _next_due: dict[int, float] = field(default_factory=dict)
    redis_clock: RedisClock = field(default_factory=RedisClock)
    """Redis' clock as read from here (when a queue is due, on Redis' clock)."""
    _room: asyncio.Event = field(default_factory=asyncio.Event)

    async def run(self, stop: asyncio.Event) -> None:
        loop = asyncio.get_running_loop()
        next_full_poll = 0.0
        self._room.set()
        self._stopping = False
        renewer = asyncio.create_task(self._keep_leases())
        try:
            while not stop.is_set():
                self.last_loop = time.monotonic()
                if self._held >= self.max_held:
                    self._room.clear()
                    await wait_any(stop, self._room, seconds=1.0)
                    continue
                now = time.time() + self.redis_clock.skew
                if loop.time() >= next_full_poll:
                    shards: Sequence[int] = range(keys.SHARDS)
                    next_full_poll = loop.time() + self.poll_seconds
                else:
                    shards = [s for s, t in self._next_due.items() if t <= now]
                if not shards:
                    soonest = min(self._next_due.values(), default=now + self.poll_seconds)
                    pause = max(0.0, min(next_full_poll - loop.time(), soonest - now))
                    if pause > self.wake_early_s:
                        await wait_any(stop, None, seconds=pause - self.wake_early_s)
                    else:
                        await asyncio.sleep(0)  # the last stretch: round again until it is due
                    continue
                try:
                    await self.step(shards)
                except asyncio.CancelledError:
                    raise
                except Exception as exc:  # Redis unreachable: keep trying, never exit
                    log.warning("take failed: %s", type(exc).__name__)
                    await wait_any(stop, None, seconds=0.5)
        finally:
            self._stopping = True
            try:
                await self._drain()
            finally:
                renewer.cancel()
                await asyncio.gather(renewer, return_exceptions=True)

    async def step(self, shards: Sequence[int] | None = None) -> int:
        """One take over these shards; completions run in the background. Returns released."""
        started = time.perf_counter()
        asked = time.monotonic()  # the lease runs from a moment after this, on Redis' clock
        sent = time.time()
        result = await self.queue.take(
            shards,
            max_items=min(self.batch, self.lease_capacity),
            queue_quota=self.queue_quota,
            min_hold_seconds=self.min_hold,
        )
        self.metrics.take_seconds.observe(time.perf_counter() - started)
        self.redis_clock.sample(result.redis_now, sent, time.time())
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
        lease_until = asked + self.queue.lease_seconds
        for portal, items in by_portal.items():
            self._held += len(items)
            for r in items:
                self._holding[r.callback_id] = r
                self._lease_until[r.callback_id] = lease_until
            outbox = self._outbox.setdefault(portal, [])
            outbox.extend(items)
            if len(outbox) >= self.send_batch and portal in self._full:
                self._full[portal].set()
            if portal not in self._senders:
                task = asyncio.create_task(self._send(portal))
                self._senders[portal] = task
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
        return len(result.released)

    async def _send(self, portal: int) -> None:
        """The portal's one sender: one batch at a time from its outbox, each settled as soon
        as HubSpot answers it, until the outbox stays empty for `partial_gap` after a call (so
        the pacing of partial batches outlives a moment with nothing to send)."""
        try:
            while True:
                await self._fill(portal)
                outbox = self._outbox.get(portal)
                if not outbox:
                    break
                if self._stopping:  # nothing new goes out: hand back what was never sent
                    self._outbox[portal] = []
                    await self._hand_back(outbox, 0.0, "dispatcher stopped before sending it")
                    break
                batch, self._outbox[portal] = outbox[: self.send_batch], outbox[self.send_batch :]
                self._last_call[portal] = time.monotonic()
                wait = await self._complete(portal, batch)
                if wait:  # the budget is spent: what waits goes with what the portal releases
                    await asyncio.sleep(wait)
        except asyncio.CancelledError:
            left = self._outbox.pop(portal, [])
            if left:
                await asyncio.shield(self._hand_back(left, 0.0, "dispatcher stopped"))
            raise
        finally:
            self._senders.pop(portal, None)
            self._last_call.pop(portal, None)
            if not self._outbox.get(portal):
                self._outbox.pop(portal, None)

    async def _fill(self, portal: int) -> None:
        """Let a partial batch (or an empty outbox) fill until `partial_gap` after the portal's
        previous call; a full batch goes at once. What is released meanwhile goes with it."""
        if len(self._outbox.get(portal, ())) >= self.send_batch:
            return
        left = self._last_call.get(portal, -math.inf) + self.partial_gap - time.monotonic()
        if left <= 0 or self._stopping:
            return
        full = self._full.setdefault(portal, asyncio.Event())
        full.clear()
        try:
            await tasks.wait(full, left)
        finally:
            del self._full[portal]

    async def _hand_back(self, items: Sequence[Released], delay: float, reason: str) -> None:
        """Items never sent go back to the head of their queues."""
        try:
            await self.queue.requeue(items, delay, reason)
            for r in items:
                self.metrics.requeued.labels(str(r.portal_id), r.policy).inc()
        except Exception as exc:  # left to the lease reaper
            log.error("%d items not handed back (%s)", len(items), type(exc).__name__)
        finally:
            self._forget(items)

    def _forget(self, items: Sequence[Released]) -> None:
        """These are settled (or handed back): no longer held by this dispatcher."""
        self._held -= len(items)
        for r in items:
            self._holding.pop(r.callback_id, None)
            self._lease_until.pop(r.callback_id, None)
        self._room.set()

    @property
    def _lease_margin(self) -> float:
        """Below this much lease left, an execution may already be back in its queue."""
        return lease_margin(self.queue.lease_seconds)

    @property
    def lease_capacity(self) -> int:
        """Most executions one take call (one shard) leases: what one portal's sender completes
        within a lease (less its margin) if every request takes its whole deadline, `send_batch`
        per request — as many requests one after another as fit, times the portal's calls out
        at once, and no more than its API budget allows in that time. More would only wait in
        the outbox, leased, behind the requests before them."""
        usable = self.queue.lease_seconds - self._lease_margin
        in_turn = max(1, int(usable // self.call_seconds)) * self.portal_calls
        budget = max(1, int(usable * self.portal_calls_per_second))
        return self.send_batch * min(in_turn, budget)

    async def _keep_leases(self) -> None:
        """Renew the leases of everything held, every third of a lease, while the dispatcher
        runs (and drains): executions waiting behind slow answers, or with a request out, never
        return to their queue while this dispatcher may still send them or hear back. One that
        dies stops renewing, and what it held comes back after one lease."""
        self._renewing = True
        try:
            while True:
                await asyncio.sleep(max(0.05, self.queue.lease_seconds / 3))
                await self._renew(list(self._holding.values()), self.queue.lease_seconds)
                for call in self._in_flight.values():
                    self._move_deadline(call)
        finally:
            self._renewing = False

    async def _renew(self, items: Sequence[Released], seconds: float) -> set[str]:
        """Extend these leases to `seconds` from now; the callback ids still leased to us."""
        if not items:
            return set()
        asked = time.monotonic()
        try:
            held = await self.queue.renew(items, seconds)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # Redis unreachable: the leases run on; checked before sending
            log.warning("renewing %d leases failed: %s", len(items), type(exc).__name__)
            return set()
        for callback_id in held:
            if callback_id in self._lease_until:
                self._lease_until[callback_id] = max(
                    self._lease_until[callback_id], asked + seconds
                )
        return held

    async def _claim(self, items: Sequence[Released]) -> list[Released]:
        """Just before a batch goes: renew its leases to a full lease, which its first request
        (deadline and margin) fits in, and keep only what is still ours. One whose lease may
        have run out may already be another dispatcher's to complete: it is neither sent nor
        settled here (the reaper or its new holder sees to it)."""
        now = time.monotonic()
        lease = self.queue.lease_seconds
        live = [
            r for r in items if self._lease_until.get(r.callback_id, now) - now > self._lease_margin
        ]
        held = await self.queue.renew(live, lease) if live else set()
        for callback_id in held:
            self._lease_until[callback_id] = max(self._lease_until[callback_id], now + lease)
        ours = [r for r in live if r.callback_id in held]
        lost = [r for r in items if r.callback_id not in held]
        if lost:
            log.warning("%d executions lost their lease before their turn; not sent", len(lost))
            self._forget(lost)
        return ours

    def _move_deadline(self, call: _InFlight) -> None:
        """A batch's completion ends a margin before the earliest lease of the batch it is known
        to hold, or at its own time limit: no request of it is out when a lease runs out."""
        ends = [self._lease_until.get(r.callback_id, 0.0) for r in call.items]
        deadline = min(call.give_up_at, min(ends) - self._lease_margin)  # monotonic
        loop_now = asyncio.get_running_loop().time()
        call.scope.reschedule(loop_now + deadline - time.monotonic())

    def _keep_for_budget(
        self, items: Sequence[Released], result: CompletionResult
    ) -> list[Released]:
        """Items only waiting for the portal's budget stay here (their lease allowing), so the
        next call carries them with everything released meanwhile instead of one call each."""
        if not result.budget_spent or result.portal_stopped or not result.retry:
            return []
        now = time.monotonic()
        # Without the renewer (tests driving `step`), the lease must outlast the wait.
        room = result.retry_after + self._lease_margin
        waiting = set(result.retry)
        keep = [
            r
            for r in items
            if r.callback_id in waiting
            and (self._renewing or self._lease_until.get(r.callback_id, now) - now > room)
        ]
        kept = {r.callback_id for r in keep}
        result.retry = [c for c in result.retry if c not in kept]
        return keep

    async def _complete(self, portal: int, items: list[Released]) -> float:
        """Complete one batch and settle it at once; returns how long to wait before the items
        it kept may go."""
        started = time.perf_counter()
        kept: list[Released] = []
        result = CompletionResult()
        try:
            try:
                items = await self._claim(items)
                if not items:
                    return 0.0
                result = await self._within_lease(portal, items)
            except asyncio.CancelledError:
                # Stopped with the request perhaps out: its outcome is unknown, so the batch
                # goes back to its queue (a re-send is answered "already completed").
                await asyncio.shield(
                    self.queue.requeue(items, 0.0, "dispatcher stopped while completing")
                )
                raise
            except TimeoutError:
                log.warning(
                    "portal %s: no answer for a batch of %d in time (%.1f s, or a margin "
                    "before its lease ends); outcome unknown, requeued",
                    portal,
                    len(items),
                    self.complete_timeout,
                )
                result = CompletionResult(retry=[r.callback_id for r in items])
                result.retry_after = self._backoff(items)
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
            await self._after(portal, result)
        finally:
            self._forget(items)
        return result.retry_after if kept else 0.0

    async def _within_lease(self, portal: int, items: list[Released]) -> CompletionResult:
        """Complete a batch within its leases (see `_move_deadline`); TimeoutError past them."""
        async with asyncio.timeout(None) as scope:
            call = _InFlight(items, scope, time.monotonic() + self.complete_timeout)
            self._move_deadline(call)
            self._in_flight[id(call)] = call
            try:
                return await self.completer.complete(portal, items)
            finally:
                del self._in_flight[id(call)]

    async def _after(self, portal: int, result: CompletionResult) -> None:
        """What the answer says about the portal's batches not sent yet: an uninstalled portal
        fails them with the same reason; a portal told to wait (429, HubSpot failing, no token)
        hands them back with the same delay rather than meet the same answer."""
        if not (result.portal_stopped or (result.portal_paused and result.retry_after > 0)):
            return
        rest = self._outbox.pop(portal, [])
        if not rest:
            return
        if result.portal_stopped:
            try:
                await self.settle(rest, CompletionResult(portal_stopped=result.portal_stopped))
            except Exception as exc:  # left to the lease reaper
                log.error("portal %s: %d items unsettled (%s)", portal, len(rest), exc)
            finally:
                self._forget(rest)
            return
        await self._hand_back(rest, result.retry_after, "not sent: the portal waits for HubSpot")

    def _backoff(self, items: Sequence[Released]) -> float:
        attempts = max((r.attempts for r in items), default=1)
        return float(min(self.retry_max, self.retry_base * 2 ** max(0, attempts - 1)))

    async def settle(self, items: Sequence[Released], result: CompletionResult) -> None:
        """Ack what completed (noting what HubSpot found already completed), requeue what may
        be retried, record what failed for good."""
        by_id = {r.callback_id: r for r in items}
        completed = [by_id[c] for c in result.completed if c in by_id]
        already = [by_id[c] for c in result.already_completed if c in by_id]
        failed = [(by_id[c], reason) for c, reason in result.failed.items() if c in by_id]
        retry = [by_id[c] for c in result.retry if c in by_id]
        accounted = {r.callback_id for r in completed} | {r.callback_id for r, _ in failed}
        accounted |= {r.callback_id for r in retry} | {r.callback_id for r in already}
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
            if already:
                out.append(self.queue.ack(already, note=ALREADY_COMPLETED_NOTE))
            if failed:
                out.append(self.queue.fail(failed))
            if retry:
                out.append(self.queue.requeue(retry, delay, "retryable completion failure"))
            return out

        await self._settle_with_retry(calls)
        for r in [*completed, *already]:
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


@dataclass
class _InFlight:
    """One batch being completed: its executions, the cancel scope of its completion, and the
    time (`time.monotonic`, as leases are tracked) past which it gives up whatever its leases."""

    items: list[Released]
    scope: asyncio.Timeout
    give_up_at: float


async def wait_any(stop: asyncio.Event, other: asyncio.Event | None, seconds: float) -> None:
    waiters = [asyncio.ensure_future(stop.wait())]
    if other is not None:
        waiters.append(asyncio.ensure_future(other.wait()))
    try:
        await asyncio.wait(waiters, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for w in waiters:
            w.cancel()
