"""Small builders shared by the engine tests."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from throttle.dispatcher.complete import CompletionResult, Released
from throttle.policy import Policy
from throttle.queue import QueueItem


def policy(name: str = "p", portal: int = 7, **spec: Any) -> Policy:
    body: dict[str, Any] = {"name": name, "portalId": portal, "rate": {"limit": 10, "period": "1s"}}
    body.update(spec)
    return Policy.model_validate(body)


def item(cb: str, portal: int = 7, workflow: int | None = 1, **kw: Any) -> QueueItem:
    return QueueItem(
        callback_id=cb,
        portal_id=portal,
        action_definition_id=kw.pop("action", 100),
        workflow_id=workflow,
        object_type="CONTACT",
        object_id=kw.pop("object_id", "1"),
        **kw,
    )


class RecordingCompleter:
    """A real Completer for tests: records every completion, optionally failing some."""

    def __init__(self, fail: dict[str, str] | None = None, retry_once: set[str] | None = None):
        self.completed: list[Released] = []
        self.calls: list[tuple[int, int]] = []
        self.fail = fail or {}
        self.retry_once = set(retry_once or ())

    async def complete(self, portal_id: int, items: Sequence[Released]) -> CompletionResult:
        self.calls.append((portal_id, len(items)))
        result = CompletionResult()
        for r in items:
            if r.callback_id in self.fail:
                result.failed[r.callback_id] = self.fail[r.callback_id]
            elif r.callback_id in self.retry_once:
                self.retry_once.discard(r.callback_id)
                result.retry.append(r.callback_id)
            else:
                self.completed.append(r)
                result.completed.append(r.callback_id)
        return result

    def release_times(self) -> list[int]:
        """When the rate let each one go (microseconds, Redis' offset clock), in order."""
        return sorted(r.released_at_us for r in self.completed)


def max_in_window(times_us: Sequence[int], period_s: float) -> int:
    """The most releases in any half-open window [t, t + period)."""
    period = round(period_s * 1_000_000)
    ordered = sorted(times_us)
    best = j = 0
    for i, t in enumerate(ordered):
        while j < len(ordered) and ordered[j] < t + period:
            j += 1
        best = max(best, j - i)
    return best
