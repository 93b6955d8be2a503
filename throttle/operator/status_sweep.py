"""Keep every ThrottlePolicy's queue figures current with one loop, not one timer per resource.

Every OPERATOR_STATUS_INTERVAL the sweep reads the figures of all policies the operator owns
(a few pipelined round trips, `OwnedPolicies.figures_many`), compares them with what each
resource shows (`OperatorState.shown`, kept by the handlers and by the sweep itself) and patches
the status of those that changed, and only those: idle policies cost no API writes at all. The
patches are paced to OPERATOR_STATUS_WRITES_PER_SECOND, the stalest first, so a burst of busy
policies bounds the API server's load instead of the operator's; a figure that waits is read
again, fresh, at the next sweep.

A per-resource kopf timer did this before: at 10,000 resources it meant 10,000 tasks, 1,000
handler calls a second through kopf's machinery, and a status write whenever a timer ran late.
The conditions (Ready, Degraded) stay with the change handlers, which see every spec change.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from kubernetes import client as k8s
from kubernetes.client.exceptions import ApiException

from throttle import tasks
from throttle.engine.manifests import GROUP, PLURAL, VERSION
from throttle.operator.handler_state import OperatorState
from throttle.operator.status_patch import figure_fields, status_patch

log = logging.getLogger(__name__)


async def sweep_statuses(state: OperatorState) -> None:
    """Until cancelled; neither a Redis error nor a bug ends it for the operator's lifetime."""
    await tasks.periodically(
        "status sweep", state.settings.operator_status_interval, lambda: sweep_once(state), log
    )


async def sweep_once(state: OperatorState) -> int:
    """One round over every owned policy; returns the number of status patches sent."""
    entries = [
        e for e in state.policies.entries.values() if not e.retiring and e.owner in state.shown
    ]
    figures = await state.policies.figures_many([e.policy for e in entries])
    changed: list[tuple[float, str, dict[str, Any]]] = []
    for entry, fig in zip(entries, figures, strict=True):
        shown = state.shown.get(entry.owner)
        if shown is None:  # deleted meanwhile
            continue
        diff = status_patch(shown, figure_fields(fig, shown))
        if diff:
            changed.append((state.written_at.get(entry.owner, 0.0), entry.owner, diff))
    rate = state.settings.operator_status_writes_per_second
    budget = max(1, int(rate * state.settings.operator_status_interval))
    sent = 0
    for _, owner, diff in sorted(changed, key=lambda c: c[0])[:budget]:
        if sent:
            await asyncio.sleep(1 / rate)
        if await _patch_status(state, owner, diff):
            sent += 1
    return sent


async def _patch_status(state: OperatorState, owner: str, diff: dict[str, Any]) -> bool:
    namespace, name = owner.split("/", 1)
    api = k8s.CustomObjectsApi(state.kube)
    try:
        await asyncio.to_thread(
            api.patch_namespaced_custom_object_status,
            GROUP,
            VERSION,
            namespace,
            PLURAL,
            name,
            {"status": diff},
        )
    except ApiException as exc:
        if exc.status != 404:  # 404: deleted meanwhile; its delete handler cleans up
            log.warning("status of %s not patched: %s %s", owner, exc.status, exc.reason)
        return False
    shown = state.shown.get(owner)
    if shown is not None:
        shown.update(diff)
    state.written_at[owner] = time.monotonic()
    state.metrics.operator_status_patches.inc()
    return True
