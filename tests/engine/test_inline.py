"""Inline rates in the engine: the fields become a Policy under the ceiling (pure), and an inline
queue is written in one script call that also holds its first release (single Redis and the
3-node Cluster), seen by the status reader and the operator's figures."""

from __future__ import annotations

import time
from datetime import timedelta
from typing import Any

import pytest

from tests.fixtures.builders import item, policy
from throttle.engine import keys
from throttle.engine.inline import InlineDecision, ceiling_for, decide
from throttle.engine.inline_index import InlineNotes, inline_load
from throttle.engine.manifests import ManifestError, policy_from_spec
from throttle.engine.policy import InlineCeiling, Rate
from throttle.engine.queue import Queue
from throttle.engine.queue_status import StatusReader
from throttle.engine.registry import (
    ensure_inline,
    purge_portal_state,
    reconcile,
    reconcile_awaited,
)
from throttle.history.folding import fold_events
from throttle.operator.owned_policies import OwnedPolicies

NOW = 1_800_000_000.0


def inline(
    values: dict[str, str], ceiling: InlineCeiling | None = None, **kw: Any
) -> InlineDecision:
    args: dict[str, Any] = {
        "portal_id": 7,
        "workflow_id": 11,
        "action_id": 22,
        "ceiling": ceiling or InlineCeiling(),
        "default_max_per_minute": 600,
        "now": NOW,
    }
    args.update(kw)
    return decide(values, **args)


@pytest.mark.parametrize(
    ("values", "limit", "seconds", "burst"),
    [
        ({"rate_count": "20"}, 20, 60, 1),  # every 1, minutes: the defaults
        ({"rate_count": "3", "rate_every": "10", "rate_unit": "seconds"}, 3, 10, 1),
        ({"rate_count": "100", "rate_every": "1.5", "rate_unit": "Hours"}, 100, 5400, 0),
        ({"rate_count": "5", "rate_unit": "d"}, 5, 86400, 0),
    ],
)
def test_fields_give_the_rate(
    values: dict[str, str], limit: int, seconds: float, burst: int
) -> None:
    """Releases under 10 s apart get `burst: 1`, which absorbs the dispatchers' jitter."""
    decision = inline(values)
    assert decision.notes == ()
    assert decision.policy.rate == Rate(limit=limit, period=timedelta(seconds=seconds), burst=burst)
    assert decision.policy.name.startswith("inline.w11.a22.")


@pytest.mark.parametrize(
    ("values", "said"),
    [
        ({"rate_count": "0"}, "'Release how many' '0' is not a whole number"),
        ({"rate_count": "-4"}, "'Release how many' '-4' is not a whole number"),
        ({"rate_count": "lots"}, "'Release how many' 'lots' is not a whole number"),
        ({"rate_count": "2.5"}, "'Release how many' '2.5' is not a whole number"),
        ({"rate_count": "2", "rate_unit": "fortnights"}, "unit 'fortnights' is not one of"),
        ({"rate_count": "2", "rate_every": "0"}, "'Every' '0' is not a number above 0"),
        ({"rate_count": "2", "rate_every": "0.1", "rate_unit": "s"}, "between 1 second and 31"),
        ({"rate_unit": "seconds"}, "no rate: 'Release how many' is empty"),
    ],
)
def test_a_bad_rate_is_held_at_the_ceiling_with_a_reason(values: dict[str, str], said: str) -> None:
    decision = inline(values, InlineCeiling(max_rate=Rate(limit=7, period=timedelta(minutes=1))))
    assert decision.policy.rate == Rate(limit=7, period=timedelta(minutes=1))
    assert said in decision.note
    assert "held at the portal's ceiling of 7 per 1 minute" in decision.note


def test_days_first_release_and_their_bad_values() -> None:
    ceiling = InlineCeiling(time_zone="Europe/Berlin")
    later = NOW + 3600
    decision = inline(
        {"rate_count": "1", "release_days": "Mon;tue;MON", "first_release_at": str(later * 1000)},
        ceiling,
    )
    assert decision.notes == ()
    schedule = decision.policy.schedule
    assert schedule is not None
    assert schedule.time_zone == "Europe/Berlin"
    assert [(w.days, w.start, w.end) for w in schedule.windows] == [
        (["Mon", "Tue"], "00:00", "24:00")
    ]
    assert decision.not_before == later
    assert inline({"rate_count": "1", "first_release_at": "2030-01-01T10:00:00Z"}).not_before > NOW
    past = inline({"rate_count": "1", "first_release_at": str((NOW - 60) * 1000)})
    assert (past.not_before, past.note) == (
        0.0,
        "the first release time has passed; released from now",
    )
    bad = inline({"rate_count": "1", "release_days": "Funday", "first_release_at": "soon"})
    assert bad.policy.schedule is None
    assert bad.not_before == 0.0
    assert "release day 'Funday' is not a weekday" in bad.note
    assert "first release 'soon' is not a date-time" in bad.note


def test_queue_names_steps_and_shared_queues() -> None:
    one = inline({"rate_count": "5"})
    assert one.policy.name == inline({"rate_count": "5"}).policy.name  # same step, same queue
    assert one.policy.name != inline({"rate_count": "6"}).policy.name  # another step (or an edit)
    assert one.policy.name != inline({"rate_count": "5"}, workflow_id=12).policy.name
    shared = inline({"rate_count": "5", "queue_name": " Nightly_Sync "})
    assert shared.policy.name == "inline.q.nightly-sync"
    assert (
        shared.policy.name == inline({"rate_count": "9", "queue_name": "nightly sync"}).policy.name
    )
    bad = inline({"rate_count": "5", "queue_name": "x" * 41})
    assert bad.policy.name.startswith("inline.w11.a22.")
    assert "queue name 'xxxx" in bad.note


def test_the_ceiling_comes_from_the_portals_default_then_the_global_one() -> None:
    own = policy("default", portal=7, inline={"maxRate": {"limit": 3, "period": "1s"}})
    glob = policy("default", portal=0, inline={"enabled": False})
    found = {(p.portal_id, p.name): p for p in (own, glob)}

    def get(portal: int, name: str) -> Any:
        return found.get((portal, name))

    assert ceiling_for(get, 7) == own.inline
    assert ceiling_for(get, 8) == glob.inline
    assert ceiling_for(lambda _p, _n: None, 8) == InlineCeiling()


async def test_one_script_call_writes_the_queue_its_entry_and_first_release(
    engine_redis: Any,
) -> None:
    queue = Queue(engine_redis)
    now = await queue.redis_time()
    decision = inline({"rate_count": "2", "rate_unit": "s"}, now=now)
    decision = InlineDecision(decision.policy, ("a note",), not_before=now + 30)
    await ensure_inline(queue, decision)
    assert [(p, n) for p, n in await inline_load(engine_redis)] == [(decision.policy, "a note")]
    assert await queue.awaiting_params() == set()
    await queue.enqueue(item("cb-1", portal=7), decision.policy)
    assert (await queue.take()).released == []  # held until its first release
    queue.time_offset_ms = 31_000
    assert [r.callback_id for r in (await queue.take()).released] == ["cb-1"]
    notes = InlineNotes(engine_redis)
    await notes.load([decision.policy.key])
    assert notes.note(decision.policy.key) == "a note"
    rows = await StatusReader(engine_redis).rows()
    assert [(r.name, r.rate) for r in rows] == [(decision.policy.name, "2/1s +1")]
    await purge_portal_state(queue, 7)
    assert await inline_load(engine_redis) == []


async def test_a_portals_default_policy_shows_its_inline_queues(redis: Any) -> None:
    queue = Queue(redis)
    default = policy("default", portal=7, inline={"maxDailyTotal": 100})
    await reconcile(queue, default)
    for count in ("1", "2"):
        decision = inline({"rate_count": count}, now=time.time())
        await ensure_inline(queue, decision)
        await queue.enqueue(item(f"cb-{count}", portal=7), decision.policy)
    await ensure_inline(queue, inline({"rate_count": "1"}, portal_id=8, now=time.time()))
    figures = await OwnedPolicies(queue).figures(default)
    assert (figures.inline_queues, figures.inline_queue_depth) == (2, 2)
    assert (await OwnedPolicies(queue).figures(policy("other", portal=7))).inline_queues is None
    assert keys.inline_queues(0).endswith(":inline")


def test_a_throttlepolicy_cannot_take_an_inline_queues_name() -> None:
    with pytest.raises(ManifestError, match="inline queues"):
        policy_from_spec("inline.w1.a2.abcdef12", {"portalId": 7, "rate": {"limit": 1}})


def test_the_note_is_kept_in_history() -> None:
    body = item("cb-1", note="rate 9 per 1 second clamped").event_body().decode()
    [row] = fold_events([{"t": "recv", "pol": "7:inline.q.x", "cb": "cb-1", "body": body}])
    assert row.last_error == "rate 9 per 1 second clamped"
    [plain] = fold_events(
        [{"t": "recv", "pol": "7:p", "cb": "cb-2", "body": item("cb-2").event_body().decode()}]
    )
    assert plain.last_error is None
    assert "note" not in item("cb-2").event_body().decode()  # old-style bodies unchanged


async def test_lost_parameters_of_an_inline_queue_are_written_again(engine_redis: Any) -> None:
    queue = Queue(engine_redis)
    decision = inline({"rate_count": "2", "rate_unit": "s"}, now=time.time())
    await ensure_inline(queue, decision)
    await engine_redis.delete(keys.params(decision.policy.key))
    await queue.enqueue(item("cb-1", portal=7), decision.policy)
    assert await queue.awaiting_params() == {decision.policy.key}
    assert await reconcile_awaited(queue, {}) == [decision.policy.key]
    assert await queue.awaiting_params() == set()
    assert [r.callback_id for r in (await queue.take()).released] == ["cb-1"]


def test_a_ceilings_burst_may_not_exceed_its_limit_locally_either() -> None:
    spec = {"portalId": 7, "rate": {"limit": 1}, "inline": {"maxRate": {"limit": 1, "burst": 2}}}
    with pytest.raises(ManifestError, match=r"spec.inline.maxRate.burst"):
        policy_from_spec("default", spec)
