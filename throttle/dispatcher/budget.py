"""Each portal's HubSpot API budget, shared by every dispatcher pod through Redis.

HubSpot allows a public app 110 calls per rolling 10 s per installed account; exceeding it
answers 429 and a storm of 429s is the pain users report most. The budget paces each portal
below that (default 100 per 10 s, `HUBSPOT_PORTAL_BUDGET` / `HUBSPOT_BUDGET_WINDOW_SECONDS`,
with per-portal overrides), counting calls from every pod in one sliding log per portal, and
after a 429 holds the portal until the window has rolled.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cache
from importlib.resources import files
from typing import Any

from throttle import keys
from throttle.settings import Settings


@cache
def lua_source(name: str) -> str:
    return files("throttle").joinpath("lua", name).read_text(encoding="utf-8")


@dataclass(frozen=True)
class BudgetGrant:
    """`granted`: the call may go now (and was counted); else wait `wait_seconds`."""

    granted: bool
    wait_seconds: float = 0.0


class PortalBudget:
    """Take calls from a portal's budget; hold a portal after a 429."""

    def __init__(
        self,
        redis: Any,
        limit: int = 100,
        window_s: float = 10.0,
        overrides: Mapping[int, int] | None = None,
    ) -> None:
        self._redis = redis
        self.limit = limit
        self.window_s = window_s
        self._overrides = dict(overrides or {})
        self._take = redis.register_script(lua_source("budget.lua"))
        self._hold = redis.register_script(lua_source("hubspot_budget_hold.lua"))

    @classmethod
    def from_settings(cls, redis: Any, settings: Settings) -> PortalBudget:
        return cls(
            redis,
            settings.hubspot_portal_budget,
            settings.hubspot_budget_window_seconds,
            settings.hubspot_budget_overrides,
        )

    def limit_for(self, portal_id: int) -> int:
        return self._overrides.get(portal_id, self.limit)

    async def try_take(self, portal_id: int) -> BudgetGrant:
        granted, wait_ms = await self._take(
            keys=[keys.hubspot_budget(portal_id), keys.hubspot_hold(portal_id)],
            args=[int(self.window_s * 1000), self.limit_for(portal_id), uuid.uuid4().hex],
        )
        return BudgetGrant(bool(int(granted)), int(wait_ms) / 1000)

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
        held_ms = await self._hold(
            keys=[keys.hubspot_hold(portal_id)], args=[max(1, int(seconds * 1000))]
        )
        return int(held_ms) / 1000

    async def held_for(self, portal_id: int) -> float:
        ttl_ms = await self._redis.pttl(keys.hubspot_hold(portal_id))
        return max(int(ttl_ms), 0) / 1000
