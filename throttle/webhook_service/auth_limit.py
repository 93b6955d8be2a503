"""Slow down anyone guessing the config API's bearer token.

Failed attempts (answers 401) are counted per client address in a sliding window; past the limit
that address gets 429 with Retry-After for every wrong token. Counting is in the pod's memory: no
Redis round trip, and the config API keeps working (and keeps refusing guessers) while Redis is
down. With N webhook pods a guesser gets at most N times the limit per window, still hopeless
against a 256-bit token: the limit is there to make guessing loud in the logs and metrics, not to
be the only defence.

The right token is never refused, locked out or not: behind an ingress many clients share one
address (the ingress' own, unless `TRUSTED_PROXIES` lists it), so a lock-out that refused
everyone from an address would let any stranger with a stream of wrong tokens lock the
operators' scripts out.

Behind a trusted proxy (`TRUSTED_PROXIES`) the client is the right-most address in
X-Forwarded-For that is not itself a trusted proxy (the one our proxy saw connect; the addresses
to its left are whatever the client wrote); otherwise the TCP peer, whatever the headers say.
"""

from __future__ import annotations

import ipaddress
import logging
import math
import time
from collections import OrderedDict, deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from throttle.webhook_service.appkeys import METRICS
from throttle.webhook_service.errors import ErrorAnswer, error_response
from throttle.webhook_service.verification import Network, peer_is_trusted

log = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

MAX_CLIENTS = 10_000
"""Addresses remembered at once; the oldest are forgotten first (bounded memory under a flood)."""


@dataclass
class FailedAttempts:
    """Sliding-window count of failed attempts per client."""

    limit: int = 10
    window_s: float = 60.0
    clock: Callable[[], float] = time.monotonic
    _seen: OrderedDict[str, deque[float]] = field(default_factory=OrderedDict)

    def _recent(self, client: str) -> deque[float]:
        times = self._seen.get(client)
        if times is None:
            return deque()
        horizon = self.clock() - self.window_s
        while times and times[0] <= horizon:
            times.popleft()
        if not times:
            del self._seen[client]
        return times

    def retry_after(self, client: str) -> int | None:
        """Seconds until `client` may try again, or None if it may try now."""
        times = self._recent(client)
        if len(times) < self.limit:
            return None
        return max(1, math.ceil(times[-self.limit] + self.window_s - self.clock()))

    def record(self, client: str) -> None:
        times = self._seen.setdefault(client, deque())
        self._seen.move_to_end(client)
        times.append(self.clock())
        while len(times) > self.limit:
            times.popleft()
        while len(self._seen) > MAX_CLIENTS:
            self._seen.popitem(last=False)


def client_address(request: web.BaseRequest, trusted: list[Network]) -> str:
    peer = request.remote or "unknown"
    if not peer_is_trusted(peer, trusted):
        return peer
    hops = [h.strip() for h in request.headers.get("X-Forwarded-For", "").split(",") if h.strip()]
    for hop in reversed(hops):
        try:
            ipaddress.ip_address(hop)
        except ValueError:
            return peer  # a garbled header: fall back to the proxy itself
        if not peer_is_trusted(hop, trusted):
            return hop
    return peer


@dataclass
class FailureLimit:
    """Wraps the config API's routes: refuse a locked-out client, count each 401 it gets."""

    attempts: FailedAttempts
    trusted: list[Network]
    authorized: Callable[[web.Request], bool]
    """Whether the request carries the right token: such a request is served even when its
    address is locked out."""
    on_refused: Callable[[], None] | None = None

    def guard(self, routes: list[web.RouteDef]) -> list[web.RouteDef]:
        return [web.RouteDef(r.method, r.path, self._guarded(r.handler), r.kwargs) for r in routes]

    def _guarded(self, handler: Any) -> Handler:
        async def limit_failures(request: web.Request) -> web.StreamResponse:
            client = client_address(request, self.trusted)
            wait = self.attempts.retry_after(client)
            if wait is not None and not self.authorized(request):
                if self.on_refused is not None:
                    self.on_refused()
                return error_response(
                    429,
                    "too_many_failed_attempts",
                    f"too many requests with a wrong token; retry in {wait} s",
                    headers={"Retry-After": str(wait)},
                )
            try:
                response: web.StreamResponse = await handler(request)
            except ErrorAnswer as exc:
                if exc.status == 401:
                    self.attempts.record(client)
                    log.warning("config API: wrong or missing token from %s", client)
                raise
            if response.status == 401:
                self.attempts.record(client)
            return response

        return limit_failures


LIMITER = web.AppKey("config_api_failed_attempts", FailedAttempts)


def install(
    app: web.Application,
    limit: int,
    window_s: float,
    trusted: list[Network],
    authorized: Callable[[web.Request], bool],
) -> FailureLimit:
    """The limiter for `app`; add the config API's routes through `limit.guard(routes)` (a
    wrapper on those routes only, where it sees the handler's 401 as raised: a middleware
    would cost every other request, HubSpot's included, a layer)."""
    attempts = FailedAttempts(limit=limit, window_s=window_s)
    app[LIMITER] = attempts
    on_refused = None
    if METRICS in app:
        rejected = app[METRICS].webhook_rejected
        on_refused = rejected.labels("config", "too_many_failures").inc
    return FailureLimit(attempts, trusted, authorized, on_refused)
