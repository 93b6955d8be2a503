"""Which portals installed the app, known in memory so the action endpoint never asks PostgreSQL.

The installs live in PostgreSQL (`hubspot_portals`, written by the OAuth flow and by uninstalls).
A background loop reads them every few seconds and mirrors them into one Redis key, so a pod that
starts while PostgreSQL is down still knows the portals (from Redis) and keeps serving. Until
either source has answered once, nothing is refused for being unknown: refusing every portal
because the database was slow at start would fail real workflows.

The pod that runs a portal's OAuth callback knows the portal the moment its tokens are stored
(`note_installed`), so that portal's first executions are held there, not refused.

A portal seen for the first time may simply have installed a moment ago (another pod ran the
OAuth callback): it is "pending" — the caller answers 503, which HubSpot retries — and the loop
refreshes at once. Only when a refresh that started after the portal was first seen still does
not know it is the portal "not installed" (a FAIL_CONTINUE with that reason). The 503s are
bounded: the early refresh starts within `MIN_REFRESH_GAP_S` of the first sight (after the one
in progress, if any), and PostgreSQL gets `LOAD_TIMEOUT_S` before the Redis mirror answers
instead. Only while neither source answers at all (Redis down too) do they go on — as every
enqueue would then.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

from throttle import bounded_cache, tasks
from throttle.engine import keys

log = logging.getLogger(__name__)

MIN_REFRESH_GAP_S = 0.5
"""Early refreshes (asked for by unknown portals) are at least this far apart."""
LOAD_TIMEOUT_S = 5.0
"""How long a refresh waits for PostgreSQL before it reads the Redis mirror instead."""
MAX_FIRST_SEEN = 10_000
"""Unknown portals whose first sight is remembered (a bound against junk portal ids)."""


@dataclass(frozen=True)
class PortalState:
    installed: bool
    reason: str | None = None
    pending: bool = False
    """Not known yet; a refresh is on its way (answer 503 so HubSpot retries)."""


INSTALLED_STATE = PortalState(True)
"""The common answer, built once (a frozen dataclass costs a microsecond per request)."""


class InstalledPortals:
    """Snapshot of installs; `state(portal)` is None while nothing has been loaded yet."""

    def __init__(
        self,
        redis: Any,
        load_installations: Callable[[], Awaitable[Sequence[Any]]] | None,
        key: str = keys.INSTALLED_PORTALS,
    ) -> None:
        self._redis = redis
        self._load = load_installations
        self._key = key
        self._installed: frozenset[int] = frozenset()
        self._stopped: dict[int, str] = {}
        self._first_seen: dict[int, float] = {}
        """Unknown portal -> when this pod first saw it (monotonic): not a cache but a memory,
        so the oldest goes first when full (that portal is "first seen" again)."""
        self._noted: dict[int, float] = {}
        """Installs this pod stored itself (portal -> monotonic time), until a refresh that
        started later has read them."""
        self._loaded_from = -1.0  # monotonic start time of the last successful refresh
        self._wake = asyncio.Event()
        self.loaded = False

    def state(self, portal_id: int) -> PortalState | None:
        if not self.loaded:
            return None
        if portal_id in self._installed:
            return INSTALLED_STATE
        reason = self._stopped.get(portal_id)
        if reason is not None:
            return PortalState(False, f"the app was uninstalled ({reason})")
        first = self._first_seen.get(portal_id)
        if first is None:
            first = bounded_cache.put(self._first_seen, portal_id, time.monotonic(), MAX_FIRST_SEEN)
        if self._loaded_from > first:
            return PortalState(False, "the app is not installed in this portal")
        self._wake.set()
        return PortalState(False, "this portal's installation is not known yet", pending=True)

    def note_installed(self, portal_id: int) -> None:
        """This pod has just stored the portal's install (the OAuth callback): known at once
        here. Every pod's view follows from PostgreSQL; the refresh woken here also rewrites
        the Redis mirror for pods that cannot reach PostgreSQL."""
        self._noted[portal_id] = time.monotonic()
        self._installed = self._installed | {portal_id}
        self._stopped = {p: r for p, r in self._stopped.items() if p != portal_id}
        self._first_seen.pop(portal_id, None)
        self._wake.set()

    def refresh_soon(self) -> None:
        """Re-read the installs now rather than at the next interval (an uninstall arrived)."""
        self._wake.set()

    def _set(self, started: float, installed: Sequence[int], stopped: dict[int, str]) -> None:
        # A refresh that started before this pod stored an install may not have seen it.
        self._noted = {p: at for p, at in self._noted.items() if at >= started}
        self._installed = frozenset(installed) | frozenset(self._noted)
        self._stopped = {p: r for p, r in stopped.items() if p not in self._noted}
        self._loaded_from = started
        self.loaded = True

    async def refresh(self) -> None:
        """PostgreSQL first (the truth), mirrored to Redis; Redis alone when PostgreSQL fails."""
        started = time.monotonic()
        if self._load is not None:
            try:
                async with asyncio.timeout(LOAD_TIMEOUT_S):
                    rows = await self._load()
            except Exception as exc:  # any database failure: fall back to the Redis mirror
                log.debug("installed portals: PostgreSQL unavailable (%s)", type(exc).__name__)
            else:
                installed = [r.portal_id for r in rows if r.status == "installed"]
                stopped = {
                    r.portal_id: r.uninstall_reason or "no reason recorded"
                    for r in rows
                    if r.status != "installed"
                }
                self._set(started, installed, stopped)
                mirror = json.dumps({"installed": installed, "stopped": stopped})
                with contextlib.suppress(Exception):
                    await self._redis.set(self._key, mirror)
                return
        raw = await self._redis.get(self._key)
        if raw is None:
            if self._load is None:
                self._set(started, [], {})
            return
        data = json.loads(raw)
        self._set(started, data["installed"], {int(k): v for k, v in data["stopped"].items()})

    async def run(self, interval: float) -> None:
        """Refresh every `interval` seconds, or sooner when an unknown portal asks for it."""
        while True:
            await tasks.wait(self._wake, interval)
            self._wake.clear()  # a wish made from here on is served by the next round
            try:
                await self.refresh()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("installed portals: refresh failed (%s)", type(exc).__name__)
            await asyncio.sleep(MIN_REFRESH_GAP_S)
