"""The policy model (pure): validation messages, durations, calendars, estimates, resolution."""

from __future__ import annotations

import asyncio
import math
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from pydantic import ValidationError

from tests.fixtures.builders import item, policy
from throttle.engine import keys
from throttle.engine.calendars import in_window, transitions
from throttle.engine.durations import format_duration, parse_duration
from throttle.engine.forecast import capacity_within, projected_wait
from throttle.engine.policy import Policy, policy_errors
from throttle.engine.policy_index import PolicyIndex, registry_delete, registry_put
from throttle.engine.queue import Queue
from throttle.engine.registry import reconcile, reconcile_awaited


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("PT1M", 60),
        ("P7D", 604800),
        ("PT1H30M", 5400),
        ("10s", 10),
        ("1m", 60),
        ("1h30m", 5400),
        ("P1W", 604800),
        ("500ms", 0.5),
        (90, 90),
    ],
)
def test_durations(text: Any, seconds: float) -> None:
    assert parse_duration(text).total_seconds() == seconds


@pytest.mark.parametrize("text", ["", "P", "PT", "1x", "one minute", "-1s"])
def test_bad_durations(text: str) -> None:
    with pytest.raises(ValueError):
        parse_duration(text)


def test_hubspot_duration_forms() -> None:
    assert format_duration(timedelta(days=7)) == "P7D"
    assert format_duration(timedelta(hours=12)) == "PT12H"
    assert format_duration(timedelta(minutes=90, seconds=5)) == "PT1H30M5S"


def test_errors_name_the_field() -> None:
    with pytest.raises(ValidationError) as caught:
        Policy.model_validate(
            {
                "name": "Bad_Name",
                "portalId": 1,
                "rate": {"limit": 0, "period": "forever"},
                "dailyCap": {"limit": 5, "timeZone": "Mars/Olympus"},
                "schedule": {"windows": [{"days": ["Funday"], "start": "25:00", "end": "09:00"}]},
                "scope": "Global",
                "overflow": "Drop",
                "expiration": "P1000D",
                "surprise": True,
            }
        )
    fields = {f for f, _ in policy_errors(caught.value)}
    assert {
        "name",
        "rate.limit",
        "rate.period",
        "dailyCap.timeZone",
        "schedule.windows.0.days",
        "schedule.windows.0.start",
        "scope",
        "overflow",
        "expiration",
        "surprise",
    } <= fields


def test_window_end_after_start() -> None:
    with pytest.raises(ValidationError) as caught:
        policy(schedule={"windows": [{"days": ["Mon"], "start": "17:00", "end": "09:00"}]})
    assert "end must be after start" in policy_errors(caught.value)[0][1]


def test_spec_round_trips_and_hash_is_stable() -> None:
    p = policy(rate={"limit": 5, "period": "10s", "burst": 1}, expiration="PT12H")
    again = Policy.model_validate(p.spec())
    assert again == p
    assert again.content_hash == p.content_hash
    assert p.spec()["rate"]["period"] == "PT10S"
    assert policy(rate={"limit": 6, "period": "10s"}).content_hash != p.content_hash


def test_offset_tables_match_the_zone_database() -> None:
    start = int(datetime(2027, 1, 1, tzinfo=UTC).timestamp())
    table = transitions("America/New_York", start, start + 365 * 86400)
    assert [o for _t, o in table] == [-18000, -14400, -18000]
    zone = ZoneInfo("America/New_York")
    for t, offset in table[1:]:
        assert datetime.fromtimestamp(t, zone).utcoffset() == timedelta(seconds=offset)
        assert datetime.fromtimestamp(t - 1, zone).utcoffset() != timedelta(seconds=offset)


def test_window_membership_uses_local_wall_clock() -> None:
    p = policy(
        schedule={
            "timeZone": "Europe/Berlin",
            "windows": [{"days": ["Mon", "Tue"], "start": "09:00", "end": "17:00"}],
        }
    )
    assert p.schedule is not None
    monday_9_berlin = datetime(2027, 7, 5, 7, 0, tzinfo=UTC).timestamp()  # CEST = UTC+2
    assert in_window(p.schedule, monday_9_berlin)
    assert not in_window(p.schedule, monday_9_berlin - 1)
    assert not in_window(p.schedule, monday_9_berlin + 8 * 3600)


def test_projected_wait_and_capacity() -> None:
    p = policy(rate={"limit": 60, "period": "1m"}, expiration="PT10M")
    now = 1_800_000_000.0
    assert projected_wait(p, 1, now) == 0
    assert projected_wait(p, 61, now) == pytest.approx(60)
    assert capacity_within(p, now) == 602  # the first, 600 at the rate, and its burst of 1
    capped = policy(rate={"limit": 60, "period": "1m"}, dailyCap={"limit": 100, "timeZone": "UTC"})
    midnight = datetime(2027, 3, 1, tzinfo=UTC).timestamp()
    # 100 today, the 101st waits for tomorrow's midnight
    assert projected_wait(capped, 100, midnight) == pytest.approx(99)
    assert projected_wait(capped, 101, midnight) == pytest.approx(86400)
    assert math.isinf(projected_wait(p.model_copy(update={"paused": True}), 1, now))


def test_resolution_order() -> None:
    named = policy(name="enrich", portal=5)
    by_action = policy(name="per-action", portal=5, actionId=77)
    portal_default = policy(name="default", portal=5)
    global_default = policy(name="default", portal=0)
    index = PolicyIndex.from_policies([named, by_action, portal_default, global_default])
    assert index.resolve(5, 77, "enrich") == named
    assert index.resolve(5, 77, None) == by_action
    assert index.resolve(5, 77, "missing") == by_action
    assert index.resolve(5, 12, None) == portal_default
    applied = index.resolve(9, 77, None)
    assert applied is not None
    assert (applied.portal_id, applied.name) == (9, "default")
    assert PolicyIndex.from_policies([]).resolve(9, 1, None) is None


async def test_index_follows_the_registry_and_global_default_applies_per_portal(
    redis: Any,
) -> None:
    queue = Queue(redis)
    index = PolicyIndex(redis)
    await index.load()
    assert index.resolve(9, 1, None) is None
    global_default = policy(name="default", portal=0, rate={"limit": 3, "period": "1s"})
    await reconcile(queue, global_default)
    assert await index.refresh()
    assert not await index.refresh()  # nothing changed: one GET, no reload
    resolved = index.resolve(9, 1, None)
    assert resolved is not None
    assert resolved.key == "9:default"
    # portal 9's first execution waits for portal 9's copy of the default's parameters...
    assert (await queue.enqueue(item("cb-1", portal=9), resolved)).status == "queued"
    assert (await queue.take()).released == []
    # ...which the default's writer writes, and the execution goes
    assert await reconcile_awaited(queue, {global_default.key: global_default}) == ["9:default"]
    assert (await queue.take()).released[0].portal_id == 9
    # a changed default reaches the portal's copy the same way (its revision is newer)
    faster = policy(name="default", portal=0, rate={"limit": 30, "period": "1s"})
    await reconcile(queue, faster)
    assert await index.refresh()
    changed = index.resolve(9, 1, None)
    assert changed is not None
    await queue.enqueue(item("cb-2", portal=9), changed)
    assert await reconcile_awaited(queue, {faster.key: faster}) == ["9:default"]
    assert await redis.hget(keys.params("9:default"), "lim") == b"30"
    # a mark for a policy the caller does not write stays for its own writer
    await redis.delete(keys.params("9:default"))
    await queue.enqueue(item("cb-3", portal=9), changed)
    assert await reconcile_awaited(queue, {}) == []
    assert await queue.awaiting_params() == {"9:default"}


async def test_each_registry_change_moves_the_revision_with_it(
    redis: Any, redis_server: Any
) -> None:
    """A pod whose refresh finds the revision unmoved keeps what it loaded (one GET per
    refresh), so a revision must never stand for two registry states. Read as one MULTI from
    a second connection while a writer creates and deletes a policy: every revision seen goes
    with exactly one state of the entry. (When the delete and the counter were two commands,
    the config API could answer 204 while a pod still routed to the deleted policy.)"""
    queue = Queue(redis)
    p = policy(name="flip", rate={"limit": 1, "period": "1m"})
    reader = redis_server.sync_client()
    seen: dict[int, bool] = {}
    done = asyncio.Event()

    async def write() -> None:
        for _ in range(200):
            await registry_put(queue.scripts, p)
            await registry_delete(queue.scripts, p.key)
        done.set()

    def snapshot() -> tuple[int, bool]:
        pipe = reader.pipeline(transaction=True)
        pipe.get(keys.REGISTRY_REV).hexists(keys.REGISTRY, p.key)
        rev, present = pipe.execute()
        return int(rev or 0), bool(present)

    writer = asyncio.create_task(write())
    while not done.is_set():
        rev, present = await asyncio.to_thread(snapshot)
        assert seen.setdefault(rev, present) == present, f"revision {rev} seen in two states"
    await writer
    assert len(seen) > 20  # the reader saw the writer at work, not only its end
