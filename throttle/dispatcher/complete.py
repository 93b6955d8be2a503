"""The completion interface: what the dispatcher hands over once the rate lets executions go.

The dispatcher groups released executions by portal and calls `Completer.complete` with one
API batch at a time (at most `Dispatcher.send_batch`, HubSpot's 100), settling each answer in
Redis before the next goes: what HubSpot accepted is acknowledged at once, whatever happens to
the batches after it. The completer (HubSpot's, or a recording one in tests) respects the
portal's budget, splits a refused batch if it must, and says what became of each.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

from throttle.engine.queue import Released


@dataclass
class CompletionResult:
    """What became of each released execution of one portal."""

    completed: list[str] = field(default_factory=list)
    """Callback ids HubSpot accepted: acknowledged."""
    already_completed: list[str] = field(default_factory=list)
    """Callback ids HubSpot says were already completed (an earlier request of ours went through
    and its answer was lost or late): acknowledged too, with a note in their history."""
    retry: list[str] = field(default_factory=list)
    """Transient failure: back to the head of the queue."""
    retry_after: float = 0.0
    """Seconds the portal must wait before its next call (applies to `retry`)."""
    failed: dict[str, str] = field(default_factory=dict)
    """Callback id -> reason: terminal, recorded as failed."""
    portal_stopped: str | None = None
    """Set when the portal can no longer be served (e.g. "uninstalled: refresh token revoked");
    every item not otherwise accounted for is recorded as failed with this reason."""
    budget_spent: bool = False
    """`retry` only waits for the portal's API budget (nothing failed): the dispatcher may keep
    the items and send them, with whatever the portal releases meanwhile, after `retry_after`."""
    portal_paused: bool = False
    """The whole portal must wait `retry_after` (a 429, HubSpot failing, no token): what the
    dispatcher holds for it and has not sent goes back to its queues with the same delay
    instead of meeting the same answer."""


class Completer(Protocol):
    async def complete(self, portal_id: int, items: Sequence[Released]) -> CompletionResult: ...
