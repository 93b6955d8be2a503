"""What the kopf handlers of one operator share, kept in kopf's memo (never a module global), so
several operators can run side by side in one process (the tests do)."""

from __future__ import annotations

import asyncio
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
    restored: set[str] = field(default_factory=set)
    """Owners whose parameters were written back and whose Event is not posted yet."""
    applied_generations: dict[str, int] = field(default_factory=dict)
    locks: dict[str, asyncio.Lock] = field(default_factory=dict)
    """One per resource: kopf runs a resource's timer beside its change handlers."""

    @staticmethod
    def of(memo: Any) -> OperatorState:
        state = memo.state
        assert isinstance(state, OperatorState)
        return state

    def lock(self, owner: str) -> asyncio.Lock:
        return self.locks.setdefault(owner, asyncio.Lock())

    @property
    def policies(self) -> OwnedPolicies:
        assert self.owned is not None, "startup has not run"
        return self.owned
