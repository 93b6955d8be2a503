"""Load shedding for HubSpot's endpoints: answer 429 early instead of falling over.

HubSpot retries a 429 (and a 5xx) with backoff for days, so under more traffic than the pod can
serve, refusing some requests quickly is lossless while accepting all of them is not: every
accepted request holds memory and an event-loop slot, latencies climb past HubSpot's timeout,
its retries pile on, and the pod is OOM-killed or stops answering health checks — losing the
requests it held. A 429 costs no HMAC, no JSON parse and no Redis call.

Two signals, both cheap and both local to the pod:
- requests in flight on the hot paths (`WEBHOOK_MAX_INFLIGHT`): bounds memory and queueing when
  Redis slows down;
- event-loop lag (`WEBHOOK_SHED_LAG_MS`), sampled every 50 ms by a background task: when the CPU
  is saturated the loop falls behind before anything else shows it. The lag steers an admission
  share (AIMD: cut by a tenth per sample while the lag stays above the threshold, raised by 2
  points per sample below it), and each new hot-path request is admitted with that probability.
  An on/off switch would shed everything at once and then nothing, and under real overload it
  collapses into shedding all but a trickle; the share settles where the loop keeps up.
Shed requests are not written to the access log (they are counted in
`throttle_webhook_rejected_total`): a log line each would cost as much as the work they avoid.
Health, metrics and the config API are never shed: the kubelet and Prometheus must still see
the pod, and an operator must still be able to change a policy during an incident.

A request's body is read, within `WEBHOOK_BODY_TIMEOUT_SECONDS` (408 beyond), before it takes
an in-flight slot: counted while its body trickled in, a few slow senders (a byte a second each)
would hold every slot and have HubSpot's own requests shed. One whose body came with its head
takes its slot as early_shed.py admits it, at the connection (`hold`; its handler `claim`s it).

Refusing must cost far less than serving, or under real overload the refusals take the core:
early_shed.py answers the 429 at the connection, before aiohttp parses the request (the
`refusal` here remains for requests that reach a handler unshed: a connection early_shed.py
does not frame, or `WEBHOOK_EARLY_SHED=false`). The in-flight cap is what bounds an admitted
request's wait on a saturated core (64 requests of ~0.3 ms of CPU each); the lag share then
settles the admitted rate where the loop keeps up.

The shedder guards HubSpot's routes (`LoadShedder.guard` wraps the options route; the action
endpoint asks `LoadShedder.refusal` itself), not every request through a middleware: each
coroutine layer between aiohttp and the Redis call costs the action endpoint 1-2 µs per
request, and only these routes are shed anyway.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from throttle.webhook_service.appkeys import METRICS
from throttle.webhook_service.errors import ErrorAnswer, error_response

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

SAMPLE_INTERVAL_S = 0.05
MIN_ADMIT = 0.05
"""Never shed everything: a trickle keeps measuring whether the pod has recovered."""
DECREASE = 0.9
INCREASE = 0.02
SHED = web.RequestKey("throttle_shed", bool)
"""Set on a shed request, so the access logger can skip it."""
OVERLOADED_DETAIL = "the service is at capacity; retry later (nothing was queued)"
SUSTAINED_SAMPLES = 5
"""Lag counts only when this many samples in a row exceed the threshold: one long pause (a GC,
a slow DNS lookup, a blocked test) must not shed the requests that arrive right after it."""


@dataclass
class LoadShedder:
    """The pod's view of its own load, and the decision to shed one request."""

    max_inflight: int = 256
    max_lag_s: float = 0.2
    retry_after_s: int = 1
    inflight: int = 0
    shed_total: int = 0
    admit: float = 1.0
    """Share of new hot-path requests admitted (1.0 unless the loop lags)."""
    body_timeout_s: float = 10.0
    samples: deque[float] = field(default_factory=lambda: deque(maxlen=SUSTAINED_SAMPLES))
    held: dict[object, int] = field(default_factory=dict, repr=False)
    """Slots taken at the connection (early_shed.py) for requests whose handler has not claimed
    them yet, per aiohttp protocol (`request.protocol`)."""
    dice: Callable[[], float] = field(default=random.random, repr=False)
    on_shed: Callable[[str, str], None] | None = field(default=None, repr=False)

    def overloaded(self) -> str | None:
        """Why a new request should be shed now, or None."""
        if self.inflight >= self.max_inflight:
            return "inflight"
        if self.admit < 1.0 and self.dice() >= self.admit:
            return "loop_lag"
        return None

    @property
    def lag_s(self) -> float:
        """The loop's sustained lag: the smallest of the last few samples (0 until there are)."""
        if len(self.samples) < SUSTAINED_SAMPLES:
            return 0.0
        return min(self.samples)

    def observe_lag(self, sample_s: float) -> None:
        self.samples.append(sample_s)
        if self.max_lag_s <= 0:
            return
        if self.lag_s > self.max_lag_s:
            self.admit = max(MIN_ADMIT, self.admit * DECREASE)
        else:
            self.admit = min(1.0, self.admit + INCREASE)

    async def watch_loop(self, interval_s: float = SAMPLE_INTERVAL_S) -> None:
        """Sleep `interval_s` again and again; any extra time is the loop's lag."""
        while True:
            started = time.perf_counter()
            await asyncio.sleep(interval_s)
            self.observe_lag(max(0.0, time.perf_counter() - started - interval_s))

    def guard(self, routes: list[web.RouteDef]) -> list[web.RouteDef]:
        """The same routes, each shed when the pod is overloaded (HubSpot's routes only)."""
        return [
            web.RouteDef(r.method, r.path, self._guarded(r.path, r.handler), r.kwargs)
            for r in routes
        ]

    async def read_body(self, request: web.Request) -> bytes:
        """The body (aiohttp keeps it for the handler's own `read()`), within `body_timeout_s`;
        call it before taking a slot."""
        try:
            async with asyncio.timeout(self.body_timeout_s):
                return await request.read()
        except TimeoutError:
            raise ErrorAnswer(
                408,
                "body_timeout",
                f"the request body did not arrive within {self.body_timeout_s:g} s",
                headers={"Connection": "close"},
            ) from None

    def shed(self, endpoint: str) -> bool:
        """Whether to shed a request of `endpoint` now; counted when it is. Asked by `refusal`,
        and by early_shed.py at the connection, before aiohttp parses the request."""
        reason = self.overloaded()
        if reason is None:
            return False
        self.shed_total += 1
        if self.on_shed is not None:
            self.on_shed(endpoint, reason)
        return True

    def hold(self, protocol: object) -> None:
        """Take a slot for a request admitted at its connection, before aiohttp parses it: the
        next requests' decision must count it at once, not once its handler runs (by then
        another loop iteration or two of arrivals would have been admitted on the same free
        slots, and refused again in their handlers at the full cost)."""
        self.inflight += 1
        self.held[protocol] = self.held.get(protocol, 0) + 1

    def claim(self, request: web.Request) -> bool:
        """Whether a slot was held for `request` at its connection; it is then the caller's
        to release (`inflight -= 1`), and the request is not shed again."""
        held = self.held
        if not held:
            return False
        protocol = request.protocol
        count = held.get(protocol)
        if not count:
            return False
        if count == 1:
            del held[protocol]
        else:
            held[protocol] = count - 1
        return True

    def release_held(self, protocol: object) -> None:
        """The connection closed: free the slots held for requests no handler will claim."""
        self.inflight -= self.held.pop(protocol, 0)

    def refusal(self, request: web.Request, endpoint: str) -> web.Response | None:
        """The 429 for a request to shed now (counted, kept out of the access log), or None:
        then the caller serves it inside `inflight += 1 ... finally: inflight -= 1`."""
        if not self.shed(endpoint):
            return None
        request[SHED] = True
        return error_response(
            429,
            "overloaded",
            OVERLOADED_DETAIL,
            headers={"Retry-After": str(self.retry_after_s)},
        )

    def _guarded(self, path: str, handler: Any) -> Handler:
        endpoint = path.rsplit("/", 1)[-1]

        async def shed(request: web.Request) -> web.StreamResponse:
            held = self.claim(request)
            if not held:
                refused = self.refusal(request, endpoint)
                if refused is not None:
                    return refused
            try:
                await self.read_body(request)
            except BaseException:
                self.inflight -= held
                raise
            self.inflight += not held
            try:
                response: web.StreamResponse = await handler(request)
            finally:
                self.inflight -= 1
            return response

        return shed


SHEDDER = web.AppKey("load_shedder", LoadShedder)


def install(
    app: web.Application, max_inflight: int, max_lag_ms: float, body_timeout_s: float = 10.0
) -> LoadShedder:
    """The shedder for `app`; add the routes it should shed through `shedder.guard(routes)`, and
    run its `watch_loop` for the app's lifetime when it sheds on the event loop's lag."""
    shedder = LoadShedder(
        max_inflight=max_inflight, max_lag_s=max_lag_ms / 1000, body_timeout_s=body_timeout_s
    )
    if METRICS in app:
        rejected = app[METRICS].webhook_rejected
        shedder.on_shed = lambda endpoint, reason: rejected.labels(endpoint, reason).inc()
    app[SHEDDER] = shedder

    return shedder
