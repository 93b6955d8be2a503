"""HubSpot refusing the app's own configuration: noticed, shared, shown, and forgotten once fixed.

A `ConfigFault` (throttle/hubspot/client.py: the client id or secret refused, a 403, a 5xx, a
proxy's answer) is never a reason to uninstall a portal: tokens stay, executions wait in their
queues. What it must be is visible. Each process' `ConfigFaultMonitor` (one per `TokenManager`)
records the fault in three places: the process' gauge `throttle_hubspot_config_fault{kind}` (the
chart's alert), a counter, and one Redis key that every webhook pod's `/readyz`, every dispatcher's
`/healthz` and `throttle doctor` read. The token endpoint's next success clears all three.

While a fault is on, a process asks the token endpoint at most once per `probe_s`: every other
refresh is answered from the record (thousands of portals would otherwise send thousands of
refused calls), and the dispatcher asks again every `RECHECK_S` even when nothing waits, so the
fault clears by itself once fixed. The record holds no secret and nothing of HubSpot's body but
its error code: kind, HTTP status, code, the portal whose refresh met it, and when.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any

from throttle.engine import keys
from throttle.hubspot.client import CONFIG_FAULT_KINDS, ConfigFault
from throttle.metrics import Metrics

log = logging.getLogger(__name__)

FAULT_TTL_S = 900.0
"""A fault nobody has met again for this long is forgotten (a pod that stopped asking)."""
PROBE_S = 5.0
"""While a fault is on, a process asks the token endpoint at most this often."""
RECHECK_S = 30.0
"""The dispatcher asks again this often while a fault is on, traffic or not."""


@dataclass(frozen=True)
class FaultRecord:
    """One configuration fault as shared between processes (no secret, no body text)."""

    kind: str
    status: int
    error: str
    detail: str
    since: float
    """Epoch seconds of the first answer of this kind in a row."""
    seen: float
    """Epoch seconds of the latest."""
    portal_id: int | None = None
    """The portal whose refresh met it: the one the dispatcher re-asks for."""

    @property
    def fault(self) -> ConfigFault:
        for kind in CONFIG_FAULT_KINDS:
            if kind == self.kind:
                return ConfigFault(kind, self.status, self.error)
        return ConfigFault("unexpected_answer", self.status, self.error)

    def summary(self) -> str:
        """The detail and since when (for /readyz, /healthz, `throttle doctor`)."""
        return (
            f"{self.detail}; since {_iso(self.since)}, last {_iso(self.seen)}; portals stay "
            "installed and executions wait in their queues until it is fixed"
        )

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, raw: bytes | str) -> FaultRecord | None:
        try:
            data = json.loads(raw)
            portal = data.get("portal_id")
            return cls(
                str(data["kind"]),
                int(data["status"]),
                str(data["error"]),
                str(data["detail"]),
                float(data["since"]),
                float(data["seen"]),
                int(portal) if portal is not None else None,
            )
        except (ValueError, TypeError, KeyError, AttributeError):
            return None


def _iso(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, tz=UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


async def read_shared(redis: Any) -> FaultRecord | None:
    """The fault some process met last (None: none, or Redis does not answer)."""
    try:
        raw = await redis.get(keys.HUBSPOT_CONFIG_FAULT)
    except Exception as exc:  # a readiness probe or doctor must not fail on this
        log.debug("config fault record unreadable (%s)", type(exc).__name__)
        return None
    return FaultRecord.from_json(raw) if raw else None


class ConfigFaultMonitor:
    """This process' view of the fault, its metrics, and the shared record in Redis."""

    def __init__(
        self,
        redis: Any,
        metrics: Metrics | None = None,
        probe_s: float = PROBE_S,
        ttl_s: float = FAULT_TTL_S,
    ) -> None:
        self._redis = redis
        self._metrics = metrics
        self._probe = probe_s
        self._ttl = ttl_s
        self._record: FaultRecord | None = None
        self._asked = 0.0  # monotonic time of the latest answer that was a fault

    def active(self) -> FaultRecord | None:
        """The fault this process met last, unless it has not met it again for the TTL."""
        if self._record is not None and time.monotonic() - self._asked < self._ttl:
            return self._record
        return None

    def held(self) -> ConfigFault | None:
        """The fault to answer with instead of asking (it was met less than `probe_s` ago)."""
        record = self.active()
        if record is not None and time.monotonic() - self._asked < self._probe:
            return record.fault
        return None

    async def report(self, fault: ConfigFault, portal_id: int | None = None) -> FaultRecord:
        now = since = time.time()
        previous = self.active()
        if previous is not None and (previous.kind, previous.status) == (fault.kind, fault.status):
            since = previous.since  # the same fault, met again
        record = FaultRecord(
            fault.kind, fault.status, fault.error, fault.describe(), since, now, portal_id
        )
        self._record = record
        self._asked = time.monotonic()
        if since == now:
            log.error(
                "%s; no portal is uninstalled for it: tokens are kept and executions wait",
                record.detail,
            )
        if self._metrics is not None:
            self._metrics.hubspot_config_faults.labels(fault.kind).inc()
            self._metrics.hubspot_config_fault.set(fault.kind, self._asked + self._ttl)
        try:
            await self._redis.set(
                keys.HUBSPOT_CONFIG_FAULT, record.to_json(), px=int(self._ttl * 1000)
            )
        except Exception as exc:  # the local gauge and logs still say it
            log.warning("config fault not shared through Redis (%s)", type(exc).__name__)
        return record

    async def clear(self) -> None:
        """The token endpoint answered as it should: the fault (any pod's) is over."""
        if self._record is not None:
            log.warning("HubSpot's token endpoint accepts the app's configuration again")
        self._record = None
        if self._metrics is not None:
            self._metrics.hubspot_config_fault.clear()
        with contextlib.suppress(Exception):
            await self._redis.delete(keys.HUBSPOT_CONFIG_FAULT)
