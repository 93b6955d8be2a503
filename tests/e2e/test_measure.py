"""The demo's arithmetic: what its verdict and the accuracy benchmark rest on."""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from throttle.engine.calendars import in_window
from throttle.engine.policy import Policy
from throttle_dev.demo import measure
from throttle_dev.demo.release_log import ReleaseLog
from throttle_dev.demo.scenario import closed_window, open_window, period_seconds, render
from throttle_dev.demo.verdict import PolicyResult, PriorityResult

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("30s", 30), ("3m", 180), ("1m30s", 90), ("1h", 3600), ("90", 90), ("250ms", 0.25)],
)
def test_parse_duration(text: str, seconds: float) -> None:
    assert measure.parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "abc", "3x", "m3", "0s", "-5"])
def test_parse_duration_refuses_nonsense(text: str) -> None:
    with pytest.raises(ValueError, match="duration"):
        measure.parse_duration(text)


def test_achieved_rate_skips_the_burst_and_ignores_interval_edges() -> None:
    # 10 released at once (burst), then one every 0.1 s: the sustained rate is 10/s.
    times = [100.0] * 10 + [100.0 + 0.1 * i for i in range(1, 201)]
    rate, used = measure.achieved_rate(times, 99.0, 130.0, skip=9) or (0.0, 0)
    assert rate == pytest.approx(10.0)
    assert used == 201
    # Without skipping, the burst inflates the estimate.
    unskipped = measure.achieved_rate(times, 99.0, 130.0)
    assert unskipped is not None
    assert unskipped[0] > 10.3


def test_achieved_rate_needs_enough_releases() -> None:
    assert measure.achieved_rate([1.0, 2.0], 0, 10) is None
    assert measure.achieved_rate([1.0] * 5, 0, 10) is None


def test_max_in_window_is_the_tightest_half_open_window() -> None:
    times = [0.0, 0.5, 0.99, 1.0, 1.5, 5.0]
    assert measure.max_in_window(times, 1.0) == 3
    assert measure.max_in_window(times, 10.0) == 6
    assert measure.max_in_window([], 1.0) == 0


def test_percentile_nearest_rank() -> None:
    values = list(range(1, 101))
    assert measure.percentile(values, 50) == 50
    assert measure.percentile(values, 99) == 99
    assert measure.percentile(values, 100) == 100
    assert measure.percentile([], 50) == 0.0


def test_backlogged_span_picks_the_longest_run() -> None:
    samples = [(0.0, 0), (1.0, 5), (2.0, 3), (3.0, 0), (4.0, 9), (5.0, 9), (6.0, 9), (7.0, 0)]
    assert measure.backlogged_span(samples) == (4.0, 6.0)
    assert measure.backlogged_span([(0.0, 0)]) is None


def test_per_second_buckets() -> None:
    assert measure.per_second([10.1, 10.2, 11.9, 13.0, 99.0], 10.0, 4) == [2, 1, 0, 1]


def test_windows_are_open_or_closed_as_promised() -> None:
    zone = ZoneInfo("America/New_York")
    now = datetime(2026, 3, 4, 15, 30, tzinfo=zone)
    window, open_for = open_window(now, 180)
    assert window == {"days": ["Wed"], "start": "14:30", "end": "15:36"}
    assert open_for == pytest.approx(6 * 60)
    late = datetime(2026, 3, 4, 23, 59, 30, tzinfo=zone)
    window, open_for = open_window(late, 180)
    assert window["end"] == "24:00"
    assert open_for == pytest.approx(30)
    assert closed_window(now) == {"days": ["Wed"], "start": "00:00", "end": "01:00"}
    assert closed_window(datetime(2026, 3, 4, 1, 0, tzinfo=zone))["start"] == "22:00"


def test_period_seconds_reads_the_crd_forms() -> None:
    assert period_seconds("10s") == 10
    assert period_seconds("1m") == 60
    assert period_seconds("PT1M") == 60
    assert period_seconds("P1D") == 86400


def test_rendered_demo_manifests_are_valid_policies(tmp_path: Path) -> None:
    scenario = render(REPO / "deploy/examples/demo", tmp_path, 30.0)
    assert len(scenario.policies) >= 5
    assert len(scenario.portals) >= 3
    features = set()
    for policy in scenario.policies:
        spec = dict(policy.spec)
        policy_model = Policy.model_validate({"name": policy.name, **spec})
        assert policy_model.rate.limit == policy.limit
        assert policy_model.rate.emission_interval == pytest.approx(1 / policy.rate_per_s)
        features |= {k for k in ("dailyCap", "schedule", "paused") if spec.get(k)}
        features |= {"burst"} if policy.burst else set()
        # An inline-rate workflow has no manifest: its queue is made by its first execution.
        assert (tmp_path / f"{policy.name}.yaml").exists() == (policy.inline_fields is None)
        assert policy.executions >= 100
    assert features == {"dailyCap", "schedule", "paused", "burst"}
    closed = [p for p in scenario.policies if p.expect_none]
    assert closed, "one policy's window is closed all run"
    for policy in closed:
        model = Policy.model_validate({"name": policy.name, **policy.spec})
        assert model.schedule is not None
        assert not in_window(model.schedule, datetime.now().timestamp())


def test_policy_result_problems() -> None:
    good = PolicyResult("a", 1, "10/1s", 10.0, achieved_per_s=10.1, window_bound=10, max_window=10)
    assert good.problems() == []
    slow = PolicyResult("b", 1, "10/1s", 10.0, achieved_per_s=9.0)
    assert "10.0% off" in slow.problems()[0]
    lost = PolicyResult("c", 1, "10/1s", 10.0, achieved_per_s=10.0, lost=2)
    assert lost.problems() == ["c: 2 lost"]
    over = PolicyResult("d", 1, "10/1s", 10.0, achieved_per_s=10.0, window_bound=10, max_window=11)
    assert "limit + burst" in over.problems()[0]
    closed = PolicyResult("e", 1, "10/1s", 10.0, expect_none=True, released=1)
    assert "outside its window" in closed.problems()[0]


def test_release_log_reads_history_events() -> None:
    log = ReleaseLog()
    log.apply_stream_entry({"t": "recv", "pol": "1:a", "cb": "x", "ts": "1000000", "enq": ""})
    log.apply_stream_entry(
        {"t": "recv", "pol": "1:a", "cb": "y", "ts": "1500000", "enq": "1400000"}
    )
    log.apply_stream_entry({"t": "rel", "pol": "1:a", "cbs": "x,y", "ts": "3000000"})
    log.apply_stream_entry({"t": "done", "pol": "1:a", "cbs": "x", "ts": "3100000"})
    log.apply_stream_entry({"t": "rel", "pol": "2:b", "cbs": "z", "ts": "4000000"})
    assert log.times("1:a") == [3.0, 3.0]
    assert sorted(log.waits("1:a")) == [pytest.approx(1.6), pytest.approx(2.0)]
    assert log.times("2:b") == [4.0]
    assert log.waits("2:b") == []  # its `recv` event was not seen
    # a release after a hand-back replaces the earlier instant (one row per callback)
    log.apply_stream_entry({"t": "rel", "pol": "1:a", "cbs": "y", "ts": "5000000"})
    assert log.times("1:a") == [3.0, 5.0]


def test_the_demo_priority_workflow_carries_a_priority_property(tmp_path: Path) -> None:
    scenario = render(REPO / "deploy/examples/demo", tmp_path, 30.0)
    queue = scenario.policy("priority")
    assert queue.priorities == ["HIGH", "MEDIUM", "LOW", "NONE"]
    assert all(not p.priorities for p in scenario.policies if p.name != "priority")


def test_release_log_reads_each_execution_priority() -> None:
    log = ReleaseLog()
    for cb, value, enq in [("a", "HIGH", 1), ("b", None, 2), ("c", "HIGH", 3)]:
        inputs = {} if value is None else {"priority": value}
        body = json.dumps({"inputs": inputs})
        log.apply_stream_entry(
            {"t": "recv", "pol": "1:p", "cb": cb, "ts": "0", "enq": str(enq * 10**6), "body": body}
        )
    log.apply_stream_entry({"t": "rel", "pol": "1:p", "ts": str(10 * 10**6), "cbs": "a,b,c"})
    assert log.waits_by_priority("1:p") == {"HIGH": [9.0, 7.0], "": [8.0]}


def test_the_verdict_holds_higher_priorities_to_going_first() -> None:
    def result(*rows: tuple[str, int, float]) -> PolicyResult:
        return PolicyResult(
            "priority", 1, "30/10s", 3.0,
            priorities=[PriorityResult(v, released=n, wait_p50_s=w) for v, n, w in rows],
        )  # fmt: skip

    assert result(("HIGH", 40, 1.0), ("MEDIUM", 30, 9.0), ("LOW", 0, 0.0)).priority_problems() == []
    inverted = result(("HIGH", 10, 12.0), ("MEDIUM", 30, 3.0)).priority_problems()
    assert len(inverted) == 1
    assert "HIGH" in inverted[0]
