"""`throttle operator --local DIR`: the operator's job without a cluster, fed by manifest files.

Reads the ThrottlePolicy manifests in DIR (the same YAML `kubectl apply` takes, see
`throttle.engine.manifests`), reconciles each through the engine's one `reconcile` function, and
keeps watching the folder: an edited file is reconciled again, a removed policy is retired as its
last `onDelete` said (until nothing of it is left), an invalid file is reported and the last
valid version stays in force. Parameters Redis loses are written back, as in a cluster.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from redis.exceptions import RedisError

from throttle import tasks
from throttle.engine import keys
from throttle.engine.layout import ensure_layout_when_reachable
from throttle.engine.manifests import Manifest, OnDelete, load_folder, manifest_files, policy_name
from throttle.engine.policy import Policy
from throttle.engine.queue import Queue
from throttle.engine.redis_client import redis_client
from throttle.health_server import health_server
from throttle.metrics import Metrics
from throttle.operator.owned_policies import AlreadyClaimed, OwnedPolicies
from throttle.settings import Settings

log = logging.getLogger(__name__)

FOLDER_POLL_S = 1.0


def _fingerprint(folder: Path) -> tuple[tuple[str, int, int], ...]:
    """What changes when a manifest is added, removed or edited."""
    out = []
    for path in manifest_files(folder):
        with contextlib.suppress(OSError):
            st = path.stat()
            out.append((str(path), st.st_mtime_ns, st.st_size))
    return tuple(out)


def _claimed_key(manifest: Manifest) -> str | None:
    """`portal:name` an invalid manifest still names (so its last valid version is kept)."""
    spec = manifest.resource.get("spec") if manifest.resource else None
    portal = spec.get("portalId") if isinstance(spec, dict) else None
    name = policy_name(manifest.resource) if manifest.resource else None
    return keys.policy_key(portal, name) if portal is not None and name else None


@dataclass
class LocalReconciler:
    """Keeps Redis in line with a folder of manifests (see the module docstring)."""

    folder: Path
    owned: OwnedPolicies
    metrics: Metrics
    modes: dict[str, OnDelete] = field(default_factory=dict)
    retiring: dict[str, tuple[Policy, OnDelete]] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)

    async def sync(self) -> None:
        """Reconcile every manifest of the folder; retire the policies that left it."""
        manifests = await asyncio.to_thread(load_folder, self.folder)
        wanted: set[str] = set()
        errors: dict[str, str] = {}
        for m in manifests:
            if m.policy is None:
                errors[m.source] = "; ".join(f"{p}: {msg}" for p, msg in m.errors)
                key = _claimed_key(m)
                if key:
                    wanted.add(key)  # keep the last valid version in force
                continue
            wanted.add(m.policy.key)
            self.retiring.pop(m.policy.key, None)
            try:
                applied = await self.owned.apply(m.policy.key, "", m.policy)
            except AlreadyClaimed as exc:  # defensive: mark_duplicates already caught these
                errors[m.source] = str(exc)
                continue
            self.modes[m.policy.key] = m.on_delete
            result = "written" if applied.written else "unchanged"
            self.metrics.operator_reconciles.labels(result).inc()
            if applied.written:
                log.info("policy %s applied from %s", m.policy.key, m.source)
        for source, message in errors.items():
            if self.errors.get(source) != message:
                self.metrics.operator_reconciles.labels("invalid").inc()
                log.error("%s not applied: %s", source, message)
        self.errors = errors
        for key in [k for k in self.owned.entries if k not in wanted]:
            entry = self.owned.entries[key]
            self.retiring[key] = (entry.policy, self.modes.get(key, "Drain"))
        await self.retire_step()

    async def retire_step(self) -> None:
        """One retire call per departing policy; forget those that are gone."""
        for key, (policy, mode) in list(self.retiring.items()):
            remaining = await self.owned.retire(policy, mode)
            if remaining:
                log.info("policy %s retiring; %d execution(s) left (%s)", key, remaining, mode)
                continue
            log.info("policy %s retired", key)
            del self.retiring[key]
            self.modes.pop(key, None)
            self.owned.forget(key)

    async def run(self, stop: asyncio.Event, check_interval: float) -> None:
        seen: tuple[Any, ...] | None = None
        since_check = 0.0
        while not stop.is_set():
            try:
                now_seen = await asyncio.to_thread(_fingerprint, self.folder)
                if now_seen != seen:
                    await self.sync()
                    seen = now_seen
                elif self.retiring:
                    await self.retire_step()
                since_check += FOLDER_POLL_S
                if since_check >= check_interval:
                    since_check = 0.0
                    for entry in await self.owned.restore_missing():
                        self.metrics.operator_restores.inc()
                        log.warning("policy %s restored after Redis lost it", entry.policy.key)
            except (RedisError, OSError) as exc:
                log.warning("local reconciler: %s; retrying", exc)
                seen = None  # reconcile everything again once Redis answers
            await tasks.wait(stop, FOLDER_POLL_S)


async def run_local(
    settings: Settings,
    folder: Path,
    *,
    stop: asyncio.Event | None = None,
    metrics: Metrics | None = None,
) -> None:
    """Reconcile `folder` until `stop` is set. An `AsyncExitStack` opens Redis and the health
    server, so a start that fails half-way (the port taken) closes what it had opened."""
    stop = stop or asyncio.Event()
    metrics = metrics or Metrics()
    role = {"status": "ok", "role": "local", "folder": str(folder)}
    async with contextlib.AsyncExitStack() as opened:
        redis = redis_client(settings)
        opened.push_async_callback(redis.aclose)
        await ensure_layout_when_reachable(redis, stop)  # before the first write
        await opened.enter_async_context(
            health_server(
                settings.host, settings.metrics_port, metrics.registry, lambda: (True, role)
            )
        )
        metrics.operator_leader.set(1)
        opened.callback(metrics.operator_leader.set, 0)
        reconciler = LocalReconciler(folder, OwnedPolicies(Queue(redis)), metrics)
        await reconciler.run(stop, settings.operator_check_interval)
