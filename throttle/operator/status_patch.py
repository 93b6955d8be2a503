"""A ThrottlePolicy's `status`: what it should say, and the smallest patch that says it.

Pure functions: the handlers feed in the resource's generation, the outcome of the last
reconcile and the queue figures; they get back the status the resource should show and a patch
holding only what differs from what it shows now, so a quiet policy costs no API writes at all.
Figures that tick continuously (ages, drain time) are rounded to whole seconds for the same
reason; conditions keep their `lastTransitionTime` until their status really changes.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Any

from pydantic import ValidationError

from throttle.engine.policy import Rate


class Outcome(Enum):
    """What the operator last managed to do with a resource's spec (the Ready reason)."""

    APPLIED = "Applied"
    """The engine holds this generation's parameters."""
    PAUSED = "Paused"
    """Applied, and the spec pauses all releases."""
    INVALID_SPEC = "InvalidSpec"
    """The spec passed the API server but not the Policy model (e.g. an unknown time zone)."""
    CONFLICT = "Conflict"
    """Another resource (or file) already defines the same `portal:name`."""
    REDIS_UNAVAILABLE = "RedisUnavailable"
    """The engine's Redis could not be reached; retried."""
    DRAINING = "Draining"
    """Deleted; queued executions are being released (or completed) before it goes."""


_DEGRADED = {Outcome.INVALID_SPEC, Outcome.CONFLICT, Outcome.REDIS_UNAVAILABLE}


@dataclass(frozen=True)
class QueueFigures:
    """The engine's figures for one policy, in the units the status shows."""

    depth: int = 0
    in_flight: int = 0
    released_total: int = 0
    oldest_queued_seconds: float | None = None
    last_release_time: dt.datetime | None = None
    projected_drain_seconds: float | None = None
    inline_queues: int | None = None
    """A portal's default policy (the inline ceiling's home): the portal's inline queues (the
    global default: every portal's); None for any other policy."""
    inline_queue_depth: int = 0


def rate_text(spec: Mapping[str, Any]) -> str:
    """`100/1m` or `100/1m+20` (with burst): the Rate printer column.

    The burst shown is the one in force, so a spec without one shows the default it gets."""
    rate = spec.get("rate") or {}
    text = f"{rate.get('limit', '?')}/{rate.get('period', '1m')}"
    try:
        burst = Rate.model_validate(rate).burst
    except ValidationError:
        burst = rate.get("burst") or 0
    return f"{text}+{burst}" if burst else text


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC).replace(microsecond=0)


def _timestamp(value: dt.datetime) -> str:
    return value.astimezone(dt.UTC).replace(microsecond=0).strftime("%Y-%m-%dT%H:%M:%SZ")


def _seconds(value: float | None) -> int | None:
    if value is None or math.isnan(value) or math.isinf(value):
        return None
    return max(0, round(value))


def condition(
    type_: str,
    status: bool,
    reason: str,
    message: str,
    generation: int,
    previous: Sequence[Mapping[str, Any]],
    now: dt.datetime,
) -> dict[str, Any]:
    """One condition; `lastTransitionTime` moves only when `status` flips."""
    text = "True" if status else "False"
    old = next((c for c in previous if c.get("type") == type_), None)
    since = (
        old["lastTransitionTime"]
        if old and old.get("status") == text and old.get("lastTransitionTime")
        else _timestamp(now)
    )
    return {
        "type": type_,
        "status": text,
        "reason": reason,
        "message": message,
        "observedGeneration": generation,
        "lastTransitionTime": since,
    }


def desired_status(
    *,
    spec: Mapping[str, Any],
    generation: int,
    outcome: Outcome,
    message: str,
    policy_name: str | None,
    figures: QueueFigures | None,
    current: Mapping[str, Any] | None,
    now: dt.datetime | None = None,
) -> dict[str, Any]:
    """The full status the resource should show. `figures=None` keeps the figures it shows."""
    now = now or _now()
    current = current or {}
    previous = current.get("conditions") or []
    ready = outcome in (Outcome.APPLIED, Outcome.PAUSED)
    degraded = outcome in _DEGRADED
    status: dict[str, Any] = {
        "observedGeneration": generation,
        "rate": rate_text(spec),
        "conditions": [
            condition("Ready", ready, outcome.value, message, generation, previous, now),
            condition(
                "Degraded",
                degraded,
                outcome.value if degraded else "AsExpected",
                message if degraded else "",
                generation,
                previous,
                now,
            ),
        ],
    }
    if policy_name:
        status["policy"] = policy_name
    if figures is None:
        for key in FIGURE_KEYS:
            if key in current:
                status[key] = current[key]
        return status
    status.update(figure_fields(figures, current))
    return status


def figure_fields(figures: QueueFigures, current: Mapping[str, Any]) -> dict[str, Any]:
    """The status keys the queue figures fill (what the status sweep alone keeps current)."""
    fields: dict[str, Any] = {
        "queueDepth": figures.depth,
        "inFlight": figures.in_flight,
        "releasedTotal": figures.released_total,
        "oldestQueuedSeconds": _seconds(figures.oldest_queued_seconds) or 0,
    }
    drain = _seconds(figures.projected_drain_seconds)
    fields["projectedDrainSeconds"] = drain if drain is not None else 0
    if figures.inline_queues is not None:
        fields["inlineQueues"] = figures.inline_queues
        fields["inlineQueueDepth"] = figures.inline_queue_depth
    if figures.last_release_time is not None:
        fields["lastReleaseTime"] = _timestamp(figures.last_release_time)
    elif "lastReleaseTime" in current:
        fields["lastReleaseTime"] = current["lastReleaseTime"]
    return fields


FIGURE_KEYS = (
    "queueDepth",
    "inFlight",
    "releasedTotal",
    "oldestQueuedSeconds",
    "projectedDrainSeconds",
    "lastReleaseTime",
    "inlineQueues",
    "inlineQueueDepth",
)


def status_patch(current: Mapping[str, Any] | None, desired: Mapping[str, Any]) -> dict[str, Any]:
    """Top-level status keys whose value differs; empty when the resource already says it all."""
    current = current or {}
    return {k: v for k, v in desired.items() if current.get(k) != v}
