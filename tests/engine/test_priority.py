"""Priority inside a queue: every release order against a plain Python model of the documented
rule (engine/priority.py), on a single Redis and on the 3-node Redis Cluster; retries, expired
leases and recovery put an execution back at its priority; a release-0.1.0 dispatcher during a
rollout loses and doubles nothing.

Time is Redis' clock shifted by the test (the scripts' debug offset), so hours of arrivals run
in a moment and the bound (9 steps of an hour) is really crossed.
"""

from __future__ import annotations

import asyncio
import re
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.fixtures.builders import item, policy
from throttle.engine import keys
from throttle.engine.policy import Policy
from throttle.engine.priority import (
    MAX_LEVEL,
    NOT_GIVEN,
    STEP_SECONDS,
    Priority,
    parse_priority,
    score_us,
)
from throttle.engine.queue import Queue, Released
from throttle.engine.registry import reconcile
from throttle.engine.scripts import lua_source

REPO = Path(__file__).resolve().parents[2]
HOUR_MS = 3_600_000
RELEASE_0_1_0 = "d5a55d6"


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (None, NOT_GIVEN),
        ("", NOT_GIVEN),
        ("  ", NOT_GIVEN),
        ("null", NOT_GIVEN),
        ("0", Priority(0, True)),
        (7, Priority(7, True)),
        ("9", Priority(9, True)),
        (" 4 ", Priority(4, True)),
        ("5.0", Priority(5, True)),
        (3.0, Priority(3, True)),
        ("HIGH", Priority(9, True)),
        ("medium", Priority(6, True)),
        ("Low", Priority(3, True)),
        ("NONE", Priority(0, True)),
        ("10", Priority(0, True, readable=False)),
        ("-1", Priority(0, True, readable=False)),
        ("urgent", Priority(0, True, readable=False)),
        ("4.5", Priority(0, True, readable=False)),
        (True, Priority(0, True, readable=False)),
        ("9" * 5000, Priority(0, True, readable=False)),
    ],
)
def test_parse_priority(value: object, expected: Priority) -> None:
    assert parse_priority(value) == expected
    assert Priority.from_tag(expected.tag) == expected


def test_unreadable_priority_says_why_in_the_output_fields() -> None:
    assert NOT_GIVEN.output_fields() == {}
    assert Priority(6, True).output_fields() == {"throttle_priority": 6}
    fields = parse_priority("urgent").output_fields()
    assert fields["throttle_priority"] == 0
    assert "not 0-9 or HIGH, MEDIUM, LOW, NONE" in str(fields["throttle_priority_reason"])


def test_lua_step_is_the_documented_step() -> None:
    found = re.search(r"local PRIORITY_STEP_US = (\d+)", lua_source("take"))
    assert found is not None
    assert int(found.group(1)) == STEP_SECONDS * 1_000_000


# --- the model -------------------------------------------------------------------------------
@dataclass
class Model:
    """The documented rule, plainly: each take releases, in order, the lowest
    (arrival - priority x step, callback id) of what is queued."""

    queued: dict[str, tuple[int, int]] = field(default_factory=dict)  # cb -> (enq_us, level)

    def key(self, cb: str) -> tuple[int, str]:
        enq, level = self.queued[cb]
        return (score_us(enq, level), cb)

    def expect(self, n: int) -> list[str]:
        return sorted(self.queued, key=self.key)[:n]


async def _enqueued_us(queue: Queue, p: Policy, cb: str) -> int:
    raw = await queue.redis.hget(keys.meta(p.key), cb)
    return int(raw.decode().split(",")[1])


def _check_bound(released: list[Released], model_levels: dict[str, tuple[int, int]]) -> None:
    """The bound, said directly: an execution is overtaken only by higher priorities that
    arrived less than (their priority - its) steps after it."""
    step_us = STEP_SECONDS * 1_000_000
    for later_i, later in enumerate(released):
        enq, level = model_levels[later.callback_id]
        for earlier in released[:later_i]:
            e_enq, e_level = model_levels[earlier.callback_id]
            if e_enq > enq:  # it overtook `later`
                assert e_level > level
                assert e_enq - enq <= (e_level - level) * step_us


@st.composite
def priority_scenarios(draw: st.DrawFn) -> dict[str, Any]:
    levels = st.integers(0, MAX_LEVEL)
    stream = draw(st.booleans())  # a continuous stream of top-priority arrivals
    steps = []
    for index in range(draw(st.integers(3, 12))):
        arrivals = draw(st.lists(levels, max_size=25 if index == 0 else 8))
        if stream:
            arrivals += [MAX_LEVEL] * draw(st.integers(2, 5))  # more than a take releases
        steps.append(
            {
                "arrivals": arrivals,
                "advance_ms": draw(st.sampled_from([HOUR_MS // 4, HOUR_MS, 3 * HOUR_MS])),
                "retry": draw(st.integers(0, 2)),
            }
        )
    return {"steps": steps, "limit": draw(st.integers(1, 4)), "burst": draw(st.integers(0, 3))}


async def check_priority_scenario(client: Any, scenario: dict[str, Any]) -> None:
    await client.flushall()
    rate = {"limit": scenario["limit"], "period": "1h", "burst": scenario["burst"]}
    p = policy(rate=rate, expiration="P30D")
    queue = Queue(client, lease_seconds=60)
    await reconcile(queue, p)
    shard = [keys.shard_of(p.key)]
    model = Model()
    levels: dict[str, tuple[int, int]] = {}
    order: list[Released] = []  # completed, in completion order
    first: dict[str, Released] = {}  # each execution's first release, in release order
    n = 0
    offset = 0
    drain = {"arrivals": [], "advance_ms": HOUR_MS, "retry": 0}
    steps = [*scenario["steps"], *[drain] * 400]  # then until empty (well within expiration)
    for step in steps:
        for level in step["arrivals"]:
            cb = f"cb-{n:04d}"
            n += 1
            await queue.enqueue(item(cb, priority=Priority(level, True)), p)
            levels[cb] = model.queued[cb] = (await _enqueued_us(queue, p, cb), level)
        offset += step["advance_ms"]
        queue.time_offset_ms = offset
        taken = (await queue.take(shard)).released
        assert [r.callback_id for r in taken] == model.expect(len(taken))
        for r in taken:
            first.setdefault(r.callback_id, r)
            del model.queued[r.callback_id]
            assert r.priority == Priority(levels[r.callback_id][1], True)
        retried, done = taken[: step["retry"]], taken[step["retry"] :]
        if retried:  # back at their priority, not at the head of everything
            assert await queue.requeue(retried, 0.0, "503") == len(retried)
            for r in retried:
                model.queued[r.callback_id] = levels[r.callback_id]
        await queue.ack(done)
        order += done
        if not model.queued and step is drain:
            break
    # nothing starved: every execution went, exactly once
    assert sorted(r.callback_id for r in order) == sorted(levels)
    assert not model.queued
    _check_bound(list(first.values()), levels)


@pytest.mark.parametrize("backend", ["single", pytest.param("cluster", marks=pytest.mark.cluster)])
@settings(
    max_examples=30,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(scenario=priority_scenarios())
def test_release_order_follows_the_documented_rule(
    request: pytest.FixtureRequest, backend: str, scenario: dict[str, Any]
) -> None:
    server = request.getfixturevalue("redis_server" if backend == "single" else "redis_cluster")

    async def run() -> None:
        client = server.client()
        try:
            await check_priority_scenario(client, scenario)
        finally:
            await client.aclose()

    asyncio.run(run())


async def test_top_priority_stream_cannot_starve_the_lowest(queue: Queue) -> None:
    """Top-priority arrivals faster than the rate: the NONE execution still goes once the
    arrivals after it are 9 steps younger, before all of them."""
    p = policy(rate={"limit": 1, "period": "1h"}, expiration="P30D")
    await reconcile(queue, p)
    await queue.enqueue(item("low"), p)  # no priority field: NONE
    released: list[str] = []
    for hour in range(1, 40):
        for i in range(2):
            await queue.enqueue(item(f"top-{hour}-{i}", priority=Priority(9, True)), p)
        queue.time_offset_ms = hour * HOUR_MS
        taken = (await queue.take()).released
        await queue.ack(taken)
        released += [r.callback_id for r in taken]
        if "low" in released:
            break
    assert "low" in released
    overtook = released[: released.index("low")]
    assert overtook
    assert all(cb.startswith("top-") for cb in overtook)
    # only those that arrived less than 9 hours after it
    assert max(int(cb.split("-")[1]) for cb in overtook) <= 9


async def test_old_workflows_stay_fifo_in_the_list(queue: Queue, engine_redis: Any) -> None:
    """Executions without the field are held exactly as before: the list, meta unchanged."""
    p = policy(rate={"limit": 100, "period": "1s", "burst": 10})
    await reconcile(queue, p)
    for i in range(5):
        await queue.enqueue(item(f"cb-{i}"), p)
    assert await engine_redis.llen(keys.queue_list(p.key, "shared")) == 5
    assert not await engine_redis.exists(keys.queue_priority(p.key, "shared"))
    meta = (await engine_redis.hget(keys.meta(p.key), "cb-0")).decode()
    assert re.fullmatch(r"\d+,\d+,\d+,0,shared", meta)
    taken = (await queue.take()).released
    assert [r.callback_id for r in taken] == [f"cb-{i}" for i in range(5)]
    assert all(r.priority == NOT_GIVEN for r in taken)


async def _three_levels(queue: Queue) -> tuple[Policy, list[Released]]:
    p = policy(rate={"limit": 100, "period": "1s", "burst": 10})
    await reconcile(queue, p)
    for cb, level in [("a0", 0), ("b5", 5), ("c9", 9), ("d5", 5)]:
        await queue.enqueue(item(cb, priority=Priority(level, True)), p)
    taken = (await queue.take()).released
    assert [r.callback_id for r in taken] == ["c9", "b5", "d5", "a0"]
    return p, taken


async def test_requeue_puts_executions_back_at_their_priority(queue: Queue) -> None:
    p, taken = await _three_levels(queue)
    await queue.enqueue(item("e5", priority=Priority(5, True)), p)
    await queue.enqueue(item("f0"), p)
    assert await queue.requeue(taken, 0.0, "503") == 4
    queue.time_offset_ms = 1000
    again = [r.callback_id for r in (await queue.take()).released]
    assert again == ["c9", "b5", "d5", "e5", "a0", "f0"]


async def test_reaped_leases_go_back_at_their_priority(queue: Queue) -> None:
    p, taken = await _three_levels(queue)
    await queue.enqueue(item("e7", priority=Priority(7, True)), p)
    queue.time_offset_ms = 31_000  # the lease is 30 s
    assert await queue.reap_expired_leases() == 4
    again = [r.callback_id for r in (await queue.take()).released]
    assert again == ["c9", "e7", "b5", "d5", "a0"]
    assert await queue.ack(taken) == 0  # the first holder's late settle changes nothing


async def test_ack_of_a_reaped_priority_execution_still_queued_removes_it(queue: Queue) -> None:
    p, taken = await _three_levels(queue)
    queue.time_offset_ms = 31_000
    assert await queue.reap_expired_leases() == 4
    # the first holder completed them after all, before anyone took them again: they are
    # finished, out of the list and the priority set, and never go a second time
    assert await queue.ack(taken) == 4
    assert (await queue.stats(p)).depth == 0
    assert (await queue.take()).released == []


async def test_stats_count_both_forms(queue: Queue) -> None:
    p = policy(rate={"limit": 1, "period": "1h"})
    await reconcile(queue, p)
    await queue.enqueue(item("a"), p)
    await queue.enqueue(item("b", priority=Priority(4, True)), p)
    result = await queue.enqueue(item("c", priority=Priority(1, True)), p)
    assert result.depth == 3
    assert (await queue.stats(p)).depth == 3


async def test_unreadable_priority_is_held_as_none_and_said_so(queue: Queue) -> None:
    p = policy(rate={"limit": 100, "period": "1s", "burst": 10})
    await reconcile(queue, p)
    await queue.enqueue(item("bad", priority=parse_priority("urgent")), p)
    await queue.enqueue(item("low", priority=Priority(1, True)), p)
    taken = (await queue.take()).released
    assert [r.callback_id for r in taken] == ["low", "bad"]
    assert taken[1].priority.output_fields()["throttle_priority"] == 0
    assert "throttle_priority_reason" in taken[1].priority.output_fields()


def _release_0_1_0_script(name: str) -> str:
    def show(path: str) -> str:
        return subprocess.run(
            ["git", "-C", str(REPO), "show", f"{RELEASE_0_1_0}:{path}"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout

    lua = "throttle/engine/lua/"
    return show(lua + "_lib.lua") + "\n" + show(lua + f"{name}.lua")


async def test_a_release_0_1_0_dispatcher_during_a_rollout_loses_and_doubles_nothing(
    queue: Queue, engine_redis: Any
) -> None:
    """Release 0.1.0's take reads only the list: it releases the NONE executions, leaves the
    priority set alone, and unschedules the queue when its list runs empty; the next reap puts
    the queue back on the schedule, and the new take releases the rest, each once."""
    p = policy(rate={"limit": 100, "period": "1s", "burst": 10})
    await reconcile(queue, p)
    for cb, level in [("a0", 0), ("b5", 5), ("c0", 0), ("d9", 9)]:
        await queue.enqueue(item(cb, priority=Priority(level, True)), p)
    shard = keys.shard_of(p.key)
    old_take = engine_redis.register_script(_release_0_1_0_script("take"))
    raw = await old_take(
        keys=[keys.due(shard), keys.leases(shard)],
        args=[0, keys.shard_prefix(shard), 1000, 30_000, 500, 100, 200, 86_400_000, 0],
    )
    old_released = [raw[i + 1].decode() for i in range(3, len(raw), 6)]
    assert old_released == ["a0", "c0"]
    ref = keys.queue_ref(p.key, "shared")
    assert await engine_redis.zscore(keys.due(shard), ref) is None  # unscheduled by the old take
    assert (await queue.take()).released == []
    await queue.reap_expired_leases()  # any dispatcher's reaper, on its round
    assert await engine_redis.zscore(keys.due(shard), ref) is not None
    new = [r.callback_id for r in (await queue.take()).released]
    assert new == ["d9", "b5"]
    assert (await queue.stats(p)).depth == 0


async def test_meta_with_a_priority_reads_as_release_0_1_0_reads_it(
    queue: Queue, engine_redis: Any
) -> None:
    """Release 0.1.0's reaper returns a priority execution to the list (it knows no set): the
    new take still releases it once, and its priority survives in meta."""
    p = policy(rate={"limit": 100, "period": "1s", "burst": 10})
    await reconcile(queue, p)
    await queue.enqueue(item("x7", priority=Priority(7, True)), p)
    taken = (await queue.take()).released
    shard = keys.shard_of(p.key)
    old_reap = engine_redis.register_script(_release_0_1_0_script("reap"))
    queue.time_offset_ms = 31_000
    returned = await old_reap(
        keys=[keys.leases(shard), keys.due(shard)],
        args=[31_000, keys.shard_prefix(shard), 1000, 1000],
    )
    assert returned == 1
    assert await engine_redis.llen(keys.queue_list(p.key, "shared")) == 1
    again = (await queue.take()).released
    assert [r.callback_id for r in again] == ["x7"]
    assert again[0].priority == Priority(7, True)
    assert await queue.ack(taken) == 0
    assert await queue.ack(again) == 1


async def test_lua_builds_the_priority_keys_keys_py_names(queue: Queue, engine_redis: Any) -> None:
    p = policy(scope="PerWorkflow")
    await reconcile(queue, p)
    await queue.enqueue(item("cb-1", workflow=42, priority=Priority(4, True)), p)
    ref = keys.queue_ref(p.key, "wf42")
    assert await engine_redis.zscore(keys.queue_priority(p.key, "wf42"), "cb-1") is not None
    assert await engine_redis.sismember(keys.prioritized(keys.shard_of(p.key)), ref)
    meta = (await engine_redis.hget(keys.meta(p.key), "cb-1")).decode()
    assert meta.endswith(",0,wf42/p4")
    taken = (await queue.take()).released
    await queue.ack(taken)
    assert not await engine_redis.exists(keys.queue_priority(p.key, "wf42"))
    await queue.reap_expired_leases()  # an emptied queue leaves the shard's set
    assert not await engine_redis.sismember(keys.prioritized(keys.shard_of(p.key)), ref)
