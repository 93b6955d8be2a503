"""What the kopf handlers of one operator share, kept in kopf's memo (never a module global), so
several operators can run side by side in one process (the tests do)."""

from __future__ import annotations

import asyncio
import contextvars
from dataclasses import dataclass, field
from typing import Any

from throttle.metrics import Metrics
from throttle.operator.owned_policies import OwnedPolicies
from throttle.settings import Settings


@dataclass
class OperatorState:
    """One per operator instance; the Redis client, the owned policies and the Redis watch are
    opened by the `startup` handler and closed by `cleanup`."""

    settings: Settings
    metrics: Metrics
    kube_configuration: Any
    """kubernetes.client.Configuration this operator acts with (login)."""
    redis: Any = None
    owned: OwnedPolicies | None = None
    watcher: asyncio.Task[None] | None = None
    sweeper: asyncio.Task[None] | None = None
    kube: Any = None
    """kubernetes.client.ApiClient the status sweep patches with (same credentials as kopf)."""
    shown: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Per resource (`namespace/name`), the queue-figure keys its status shows, as last written:
    the sweep patches only what differs from this, so idle policies cost no API writes."""
    refs: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Per resource, the few fields an Event needs (apiVersion, kind, name, namespace, uid), so
    the Redis watch can post one without the resource's body."""
    posting: contextvars.Context | None = None
    """A copy of a handler's context: kopf's Event queue lives in context variables that only its
    per-resource tasks have, and the Redis watch posts from its own task."""
    written_at: dict[str, float] = field(default_factory=dict)
    """Per resource, when the sweep last patched it: the stalest go first within the budget."""
    applied_generations: dict[str, int] = field(default_factory=dict)
    locks: dict[str, asyncio.Lock] = field(default_factory=dict)
    """One per resource: a resource's change and delete handlers never interleave."""

    @staticmethod
    def of(memo: Any) -> OperatorState:
        state = memo.state
        assert isinstance(state, OperatorState)
        return state

    def lock(self, owner: str) -> asyncio.Lock:
        return self.locks.setdefault(owner, asyncio.Lock())

    def forget(self, owner: str) -> None:
        """A resource is gone: drop everything kept for it."""
        for kept in (self.applied_generations, self.locks, self.shown, self.refs, self.written_at):
            kept.pop(owner, None)

    @property
    def policies(self) -> OwnedPolicies:
        assert self.owned is not None, "startup has not run"
        return self.owned
