"""One active operator among many replicas, by a coordination.k8s.io Lease.

Only the holder of the Lease runs kopf; the others wait, so two replicas never write the same
parameters or fight over status. This is what client-go's leader election does, kept small:

- a replica may take the Lease when nobody holds it, or when the holder's record has not changed
  for `duration_s` *as this replica observed it* (own monotonic clock, so clock skew between
  nodes cannot hand the Lease to two replicas);
- every write carries the resourceVersion it read, so two replicas racing for a free Lease cannot
  both win (the loser gets 409 Conflict);
- the holder renews every `renew_s`; if it cannot renew before `duration_s` has passed since its
  last successful renewal it gives up at once (stops acting) rather than risk a second leader;
- a holder that stops cleanly clears the holder, so a standby takes over without waiting.

The Kubernetes client is the synchronous `kubernetes` one, called in a worker thread: the Lease
is touched a few times a minute, never on a hot path.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from kubernetes import client as k8s
from kubernetes.client.exceptions import ApiException

from throttle import tasks

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LeaseSettings:
    """Where the Lease lives and how long a holder's word lasts."""

    name: str
    namespace: str
    identity: str
    duration_s: float = 15.0
    renew_s: float = 5.0
    retry_s: float = 2.0


@dataclass
class _Observation:
    resource_version: str | None = None
    holder: str | None = None
    seen_at: float = 0.0


@dataclass
class LeaderLease:
    """Acquire, renew and release one Lease (see the module docstring)."""

    api: Any
    """A kubernetes.client.CoordinationV1Api."""
    settings: LeaseSettings
    clock: Any = time.monotonic
    _observed: _Observation = field(default_factory=_Observation)
    _renewed_at: float | None = None

    # ---- one attempt (sync; run in a thread) --------------------------------------------------

    def try_acquire(self) -> bool:
        """Take or renew the Lease if allowed; True when this replica holds it afterwards."""
        s = self.settings
        now_wall = dt.datetime.now(dt.UTC)
        try:
            lease = self.api.read_namespaced_lease(s.name, s.namespace)
        except ApiException as exc:
            if exc.status != 404:
                raise
            body = k8s.V1Lease(
                metadata=k8s.V1ObjectMeta(name=s.name, namespace=s.namespace),
                spec=self._spec(now_wall, acquired=now_wall, transitions=0),
            )
            # a conflict: another replica created it first
            return self._written(lambda: self.api.create_namespaced_lease(s.namespace, body))

        spec = lease.spec or k8s.V1LeaseSpec()
        holder = spec.holder_identity or None
        rv = lease.metadata.resource_version
        if rv != self._observed.resource_version:
            self._observed = _Observation(rv, holder, self.clock())
        if holder and holder != s.identity:
            duration = float(spec.lease_duration_seconds or s.duration_s)
            if self.clock() - self._observed.seen_at < duration:
                return False
            log.info("lease %s/%s: holder %s stopped renewing; taking over", *self._names(holder))
        ours = holder == s.identity
        transitions = int(spec.lease_transitions or 0) + (0 if ours else 1)
        acquired = spec.acquire_time if ours and spec.acquire_time else now_wall
        lease.spec = self._spec(now_wall, acquired=acquired, transitions=transitions)
        # a conflict: somebody wrote in between; re-read next time
        return self._written(lambda: self.api.replace_namespaced_lease(s.name, s.namespace, lease))

    def _written(self, write: Callable[[], object]) -> bool:
        """Whether `write` held the Lease for us: False when the API server refused it as a
        conflict (409), another replica having written first."""
        try:
            write()
        except ApiException as exc:
            if exc.status == 409:
                return False
            raise
        self._renewed_at = self.clock()
        return True

    def release(self) -> None:
        """Clear the holder if it is us, so a standby takes over at once."""
        s = self.settings
        try:
            lease = self.api.read_namespaced_lease(s.name, s.namespace)
            if lease.spec is None or lease.spec.holder_identity != s.identity:
                return
            lease.spec.holder_identity = None
            lease.spec.lease_duration_seconds = 1
            self.api.replace_namespaced_lease(s.name, s.namespace, lease)
            log.info("lease %s/%s released", s.namespace, s.name)
        except ApiException as exc:
            log.warning("lease %s/%s not released: %s", s.namespace, s.name, exc.reason)
        finally:
            self._renewed_at = None

    @property
    def expired(self) -> bool:
        """True when our last successful renewal is older than the lease duration."""
        return self._renewed_at is None or (
            self.clock() - self._renewed_at >= self.settings.duration_s
        )

    def _spec(self, now: dt.datetime, *, acquired: dt.datetime, transitions: int) -> Any:
        return k8s.V1LeaseSpec(
            holder_identity=self.settings.identity,
            lease_duration_seconds=max(1, round(self.settings.duration_s)),
            acquire_time=acquired,
            renew_time=now,
            lease_transitions=transitions,
        )

    def _names(self, holder: str) -> tuple[str, str, str]:
        return self.settings.namespace, self.settings.name, holder

    # ---- loops (async) --------------------------------------------------------------------------

    async def acquire(self, stop: asyncio.Event) -> bool:
        """Wait until this replica holds the Lease (True) or `stop` is set (False)."""
        announced = False
        while not stop.is_set():
            try:
                if await asyncio.to_thread(self.try_acquire):
                    log.info("lease %s/%s acquired by %s", *self._names(self.settings.identity))
                    return True
            except ApiException as exc:
                log.warning("lease %s/%s: %s", self.settings.namespace, self.settings.name, exc)
            if not announced:
                log.info("standing by: another replica holds the operator lease")
                announced = True
            await tasks.wait(stop, self.settings.retry_s)
        return False

    async def keep(self, stop: asyncio.Event) -> None:
        """Renew until `stop` is set; on losing the Lease set `stop` and return."""
        while not stop.is_set():
            await tasks.wait(stop, self.settings.renew_s)
            if stop.is_set():
                return
            try:
                held = await asyncio.to_thread(self.try_acquire)
            except Exception as exc:  # API down, network: keep acting only while the lease lasts
                log.warning("lease renewal failed: %s", exc)
                held = not self.expired
            if not held or self.expired:
                log.error("operator lease lost; stopping so another replica can act")
                stop.set()
                return
