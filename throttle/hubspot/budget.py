"""Each portal's HubSpot API budget, shared by every dispatcher pod through Redis.

HubSpot allows a public app 110 calls per rolling 10 s per installed account; exceeding it
answers 429 and a storm of 429s is the pain users report most. The budget paces each portal
below that (default 100 per 10 s, `HUBSPOT_PORTAL_BUDGET` / `HUBSPOT_BUDGET_WINDOW_SECONDS`,
with per-portal overrides), counting calls from every pod in one sliding log per portal, and
after a 429 holds the portal until the window has rolled. At most `HUBSPOT_PORTAL_CONCURRENCY`
calls of a portal are in flight at once across all pods (default 1): when a 429 storm starts,
only the call in flight meets it, and the hold stops the rest before they go.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from throttle.engine import keys
from throttle.engine.scripts import Scripts
from throttle.settings import Settings


@dataclass(frozen=True)
class BudgetGrant:
    """`granted`: the call may go now (counted, in flight until `release`); else wait."""

    granted: bool
    wait_seconds: float = 0.0
    call_id: str = ""


class PortalBudget:
    """Take calls from a portal's budget; hold a portal after a 429."""

    def __init__(
        self,
        redis: Any,
        limit: int = 100,
        window_s: float = 10.0,
        overrides: Mapping[int, int] | None = None,
        max_in_flight: int = 1,
        lease_s: float = 15.0,
        poll_s: float = 0.01,
    ) -> None:
        """`lease_s` must exceed the HTTP timeout: a pod that dies mid-call frees its slot then."""
        self._redis = redis
        self._scripts = Scripts(redis)
        self.limit = limit
        self.window_s = window_s
        self.max_in_flight = max_in_flight
        self._lease_ms = int(lease_s * 1000)
        self._poll_ms = max(1, int(poll_s * 1000))
        self._overrides = dict(overrides or {})

    @classmethod
    def from_settings(cls, redis: Any, settings: Settings) -> PortalBudget:
        return cls(
            redis,
            settings.hubspot_portal_budget,
            settings.hubspot_budget_window_seconds,
            settings.hubspot_budget_overrides,
            settings.hubspot_portal_concurrency,
        )

    def limit_for(self, portal_id: int) -> int:
        return self._overrides.get(portal_id, self.limit)

    async def try_take(self, portal_id: int) -> BudgetGrant:
        call_id = uuid.uuid4().hex
        granted, wait_ms = await self._scripts.run(
            Scripts.hubspot_budget_take(
                keys.hubspot_budget(portal_id),
                keys.hubspot_hold(portal_id),
                keys.hubspot_in_flight(portal_id),
                window_ms=int(self.window_s * 1000),
                limit=self.limit_for(portal_id),
                call_id=call_id,
                max_in_flight=self.max_in_flight,
                lease_ms=self._lease_ms,
                poll_ms=self._poll_ms,
            )
        )
        if int(granted):
            return BudgetGrant(True, 0.0, call_id)
        return BudgetGrant(False, int(wait_ms) / 1000)

    async def release(self, portal_id: int, grant: BudgetGrant) -> None:
        """The call has its answer (and any hold is set): free its in-flight slot."""
        if grant.granted:
            await self._redis.zrem(keys.hubspot_in_flight(portal_id), grant.call_id)

    async def take(self, portal_id: int, max_wait_s: float) -> BudgetGrant:
        """Wait up to `max_wait_s` for a call; if the budget needs longer, say how long."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + max_wait_s
        while True:
            grant = await self.try_take(portal_id)
            if grant.granted or loop.time() + grant.wait_seconds > deadline:
                return grant
            await asyncio.sleep(grant.wait_seconds)

    async def hold(self, portal_id: int, seconds: float) -> float:
        """No call for this portal from any pod for `seconds` (at least); returns the hold."""
        held_ms = await self._scripts.run(
            Scripts.hubspot_budget_hold(
                keys.hubspot_hold(portal_id), hold_ms=max(1, int(seconds * 1000))
            )
        )
        return int(held_ms) / 1000
