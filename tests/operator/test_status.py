"""Status is computed purely, and a refresh that finds nothing new sends nothing."""

from __future__ import annotations

import datetime as dt
from typing import Any

from throttle.engine.manifests import policy_from_spec
from throttle.operator.owned_policies import drain_seconds
from throttle.operator.status_patch import (
    Outcome,
    QueueFigures,
    desired_status,
    rate_text,
    status_patch,
)

SPEC = {"portalId": 1, "rate": {"limit": 10, "period": "1m", "burst": 0}}
T0 = dt.datetime(2026, 3, 1, 12, 0, tzinfo=dt.UTC)


def status(
    outcome: Outcome,
    figures: QueueFigures | None,
    current: dict[str, Any] | None,
    now: dt.datetime,
) -> dict[str, Any]:
    return desired_status(
        spec=SPEC,
        generation=3,
        outcome=outcome,
        message="m",
        policy_name="1:p",
        figures=figures,
        current=current,
        now=now,
    )


def test_quiet_refresh_patches_nothing() -> None:
    first = status(Outcome.APPLIED, QueueFigures(depth=5, oldest_queued_seconds=12.2), None, T0)
    assert status_patch(None, first) == first
    # Seconds later the age moved by a fraction: same rounded figures, no patch at all.
    again = status(
        Outcome.APPLIED,
        QueueFigures(depth=5, oldest_queued_seconds=12.4),
        first,
        T0 + dt.timedelta(seconds=10),
    )
    assert status_patch(first, again) == {}


def test_conditions_keep_their_transition_time_until_they_flip() -> None:
    first = status(Outcome.APPLIED, QueueFigures(), None, T0)
    later = T0 + dt.timedelta(minutes=5)
    same = status(Outcome.PAUSED, QueueFigures(), first, later)
    ready = next(c for c in same["conditions"] if c["type"] == "Ready")
    assert ready["status"] == "True"
    assert ready["reason"] == "Paused"
    assert ready["lastTransitionTime"] == "2026-03-01T12:00:00Z"  # still Ready: no transition
    broken = status(Outcome.INVALID_SPEC, None, same, later)
    conditions = {c["type"]: c for c in broken["conditions"]}
    assert conditions["Ready"]["status"] == "False"
    assert conditions["Ready"]["lastTransitionTime"] == "2026-03-01T12:05:00Z"
    assert conditions["Degraded"]["status"] == "True"
    assert conditions["Degraded"]["reason"] == "InvalidSpec"
    assert set(status_patch(same, broken)) == {"conditions"}  # figures kept as they were


def test_figures_and_rate_text() -> None:
    last = T0 - dt.timedelta(seconds=3)
    shown = status(
        Outcome.APPLIED,
        QueueFigures(3, 2, 40, 7.6, last, float("inf")),
        None,
        T0,
    )
    assert shown["queueDepth"] == 3
    assert shown["inFlight"] == 2
    assert shown["releasedTotal"] == 40
    assert shown["oldestQueuedSeconds"] == 8
    assert shown["lastReleaseTime"] == "2026-03-01T11:59:57Z"
    assert shown["projectedDrainSeconds"] == 0  # unknown (inf) is not shown as a number
    assert rate_text(SPEC) == "10/1m"
    assert rate_text({"rate": {"limit": 5, "period": "10s", "burst": 2}}) == "5/10s+2"
    # no burst in the spec: the column shows the default in force (1 for releases < 10 s apart)
    assert rate_text({"rate": {"limit": 5, "period": "10s"}}) == "5/10s+1"
    assert rate_text({"rate": {"limit": 5, "period": "10s", "burst": 0}}) == "5/10s"


def test_drain_estimate() -> None:
    policy = policy_from_spec("p", SPEC)
    now = T0.timestamp()
    assert drain_seconds(policy, 0, now) == 0.0
    assert drain_seconds(policy, 11, now) == 60.0  # the 11th leaves a minute after the first
    big = drain_seconds(policy, 20_000, now)
    assert big is not None
    assert 119_000 < big < 121_000  # linear beyond the exact walk
    paused = policy_from_spec("p", {**SPEC, "paused": True})
    assert drain_seconds(paused, 5, now) is None
