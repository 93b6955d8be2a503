"""The Redis layer's operations, each on a single Redis and on the 3-node Redis Cluster."""

from __future__ import annotations

from typing import Any

import pytest

from tests.fixtures.builders import item, policy
from tests.fixtures.simulation import max_in_window
from throttle.engine import keys
from throttle.engine.queue import Queue
from throttle.engine.registry import reconcile, retire
from throttle.history.folding import event_callback_ids


async def test_enqueue_dedupes_and_marks_the_queue_due(queue: Queue, engine_redis: Any) -> None:
    p = policy()
    first = await queue.enqueue(item("cb-1"), p)
    again = await queue.enqueue(item("cb-1"), p)
    assert (first.status, first.depth) == ("queued", 1)
    assert (again.status, again.depth) == ("duplicate", 1)
    shard = keys.shard_of(p.key)
    assert await engine_redis.zscore(keys.due(shard), keys.queue_ref(p.key, "shared")) is not None
    assert await engine_redis.llen(keys.queue_list(p.key, "shared")) == 1
    # the parameters were missing: the enqueue wrote none, it marked them awaited
    assert not await engine_redis.exists(keys.params(p.key))
    assert await queue.awaiting_params() == {p.key}
    await reconcile(queue, p)  # the writer's reconcile clears the mark
    assert await queue.awaiting_params() == set()


async def test_lua_builds_the_same_keys_as_keys_py(queue: Queue, engine_redis: Any) -> None:
    p = policy(scope="PerWorkflow")
    await reconcile(queue, p)
    await queue.enqueue(item("cb-1", workflow=42), p)
    taken = await queue.take()
    assert [r.callback_id for r in taken.released] == ["cb-1"]
    shard = keys.shard_of(p.key)
    member = f"{keys.queue_ref(p.key, 'wf42')}|cb-1"  # the lease format release 0.1.0 reads too
    assert await engine_redis.zscore(keys.leases(shard), member) is not None
    assert await engine_redis.hget(keys.stats(p.key), "released") == b"1"
    assert await engine_redis.hexists(keys.queue_state(p.key, "wf42"), "a")
    assert await engine_redis.xlen(keys.events(shard)) == 2  # received, released
    await queue.ack(taken.released)
    assert await engine_redis.zscore(keys.done(p.key), "cb-1") is not None
    assert not await engine_redis.hexists(keys.meta(p.key), "cb-1")


async def test_take_respects_rate_and_burst_with_redis_time(queue: Queue) -> None:
    p = policy(rate={"limit": 10, "period": "1s", "burst": 2})
    await reconcile(queue, p)
    for i in range(40):
        await queue.enqueue(item(f"cb-{i}"), p)
    now = await queue.redis_time()
    shard = [keys.shard_of(p.key)]
    first = await queue.take(shard)
    assert len(first.released) == 3  # 1 + burst after an idle spell
    assert len((await queue.take(shard)).released) == 0
    # taking every 50 ms: one more per emission interval (100 ms) of Redis time
    times = [r.released_at_us for r in first.released]
    for step in range(1, 21):
        queue.time_offset_ms = step * 50
        times += [r.released_at_us for r in (await queue.take(shard)).released]
    span = (times[-1] - times[0]) / 1e6
    assert len(times) - 3 == pytest.approx(span * 10, abs=1)
    assert max_in_window(times, 1.0) <= 12
    # after a long idle spell only 1 + burst go at once (no accumulated catch-up)
    queue.time_offset_ms = 60_000
    assert len((await queue.take()).released) == 3
    due = (await queue.take()).next_due
    assert min(due.values()) > now + 60


async def test_requeue_puts_items_back_at_the_head_in_order(queue: Queue) -> None:
    p = policy(rate={"limit": 100, "period": "1s", "burst": 10})
    await reconcile(queue, p)
    for i in range(8):
        await queue.enqueue(item(f"cb-{i}"), p)
    taken = (await queue.take()).released
    assert [r.callback_id for r in taken] == [f"cb-{i}" for i in range(8)]
    await queue.ack(taken[:2])
    assert await queue.requeue(list(reversed(taken[2:])), 0.0, "503") == 6
    queue.time_offset_ms = 1000
    again = (await queue.take()).released
    assert [r.callback_id for r in again] == [f"cb-{i}" for i in range(2, 8)]
    assert all(r.attempts == 2 for r in again)


async def test_requeue_backoff_holds_the_queue(queue: Queue) -> None:
    p = policy(rate={"limit": 100, "period": "1s", "burst": 10})
    await reconcile(queue, p)
    await queue.enqueue(item("cb-1"), p)
    taken = (await queue.take()).released
    await queue.requeue(taken, delay_seconds=5, reason="429")
    queue.time_offset_ms = 4000
    assert (await queue.take()).released == []
    queue.time_offset_ms = 5100
    assert [r.callback_id for r in (await queue.take()).released] == ["cb-1"]


async def test_expired_lease_returns_to_the_head(queue: Queue) -> None:
    p = policy(rate={"limit": 100, "period": "1s", "burst": 10})
    await reconcile(queue, p)
    for i in range(3):
        await queue.enqueue(item(f"cb-{i}"), p)
    held = (await queue.take()).released
    assert len(held) == 3
    assert await queue.reap_expired_leases() == 0
    queue.time_offset_ms = 31_000  # the lease is 30 s
    assert await queue.reap_expired_leases() == 3
    again = (await queue.take()).released
    assert [r.callback_id for r in again] == ["cb-0", "cb-1", "cb-2"]
    assert [r.attempts for r in again] == [2, 2, 2]
    # the first holder settling late leaves them to their new holder
    assert await queue.ack(held) == 0
    assert await queue.ack(again) == 3
    stats = await queue.stats(p)
    assert (stats.depth, stats.in_flight, stats.acked) == (0, 0, 3)


async def _engine_state(redis: Any, p: Any) -> dict[str, Any]:
    """Every key a settling script may write, as plain values."""
    shard = keys.shard_of(p.key)
    return {
        "leases": await redis.zrange(keys.leases(shard), 0, -1, withscores=True),
        "due": await redis.zrange(keys.due(shard), 0, -1, withscores=True),
        "meta": await redis.hgetall(keys.meta(p.key)),
        "done": await redis.zrange(keys.done(p.key), 0, -1, withscores=True),
        "stats": await redis.hgetall(keys.stats(p.key)),
        "list": await redis.lrange(keys.queue_list(p.key, "shared"), 0, -1),
        "state": await redis.hgetall(keys.queue_state(p.key, "shared")),
        "events": await redis.xlen(keys.events(shard)),
    }


async def test_a_stale_holder_changes_nothing(queue: Queue, engine_redis: Any) -> None:
    """The first holder's lease ran out and another dispatcher took the executions since: the
    first holder's ack, requeue, fail and renew (its attempt number is the older one) leave
    every key as it was, and the new holder settles them."""
    p = policy(rate={"limit": 100, "period": "1s", "burst": 10})
    await reconcile(queue, p)
    for i in range(4):
        await queue.enqueue(item(f"cb-{i}"), p)
    stale = (await queue.take()).released
    queue.time_offset_ms = 31_000  # the lease is 30 s
    assert await queue.reap_expired_leases() == 4
    holder = (await queue.take()).released
    assert [r.callback_id for r in holder] == [r.callback_id for r in stale]
    before = await _engine_state(engine_redis, p)
    assert await queue.ack(stale[:1]) == 0
    assert await queue.requeue(stale[1:2], 5.0, "503") == 0
    assert await queue.fail([(stale[2], "refused")]) == 0
    assert await queue.renew(stale, 60.0) == set()
    assert await _engine_state(engine_redis, p) == before
    assert await queue.renew(holder, 60.0) == {r.callback_id for r in holder}
    assert await queue.ack(holder[:1]) == 1
    assert await queue.requeue(holder[1:2], 0.0, "503") == 1
    assert await queue.fail([(holder[2], "refused")]) == 1
    stats = await queue.stats(p)
    assert (stats.acked, stats.failed, stats.requeued, stats.in_flight) == (1, 1, 1, 1)


async def test_a_5xx_spell_spends_the_daily_cap_once_per_execution(
    queue: Queue, engine_redis: Any
) -> None:
    """HubSpot fails every completion three times before accepting it: each execution is
    released four times, but the daily cap counts it once, so the day's 20 all complete today
    and the next 10 wait for tomorrow (before: the retries spent the cap). The rate charges
    every release, retries too: no second of releases exceeds the limit."""
    p = policy(
        rate={"limit": 10, "period": "1s", "burst": 0},
        dailyCap={"limit": 20, "timeZone": "UTC"},
    )
    await reconcile(queue, p)
    now = await queue.redis_time()
    noon = (now // 86_400 + 1) * 86_400 + 43_200  # tomorrow 12:00 UTC: no midnight within reach
    queue.time_offset_ms = round((noon - now) * 1000)
    for i in range(30):
        await queue.enqueue(item(f"cb-{i}"), p)
    releases: list[int] = []
    for _step in range(300):  # 30 s of Redis time, a take every 100 ms
        queue.time_offset_ms += 100
        taken = (await queue.take()).released
        releases += [r.released_at_us for r in taken]
        await queue.requeue([r for r in taken if r.attempts < 4], 0.0, "HTTP 503")
        await queue.ack([r for r in taken if r.attempts == 4])
    stats = await queue.stats(p)
    assert (stats.acked, stats.released, stats.requeued, stats.depth) == (20, 80, 60, 10)
    state = await engine_redis.hget(keys.queue_state(p.key, "shared"), "ccnt")
    assert int(state) == 20
    assert max_in_window(releases, 1.0) <= 10


async def test_ack_of_a_reaped_item_still_queued_removes_it(queue: Queue) -> None:
    p = policy()
    await reconcile(queue, p)
    await queue.enqueue(item("cb-1"), p)
    held = (await queue.take()).released
    queue.time_offset_ms = 31_000
    await queue.reap_expired_leases()
    assert await queue.ack(held) == 1
    assert (await queue.take()).released == []
    assert (await queue.stats(p)).depth == 0


async def test_fail_records_terminal_failures(queue: Queue) -> None:
    p = policy()
    await reconcile(queue, p)
    await queue.enqueue(item("cb-1"), p)
    held = (await queue.take()).released
    assert await queue.fail([(held[0], "callback expired at HubSpot")]) == 1
    stats = await queue.stats(p)
    assert (stats.failed, stats.in_flight, stats.depth) == (1, 0, 0)
    assert (await queue.enqueue(item("cb-1"), p)).duplicate


async def test_expired_items_are_dropped_not_released(queue: Queue) -> None:
    p = policy(expiration="PT1M", rate={"limit": 1, "period": "1h"})
    await reconcile(queue, p)
    await queue.enqueue(item("cb-1"), p)
    await queue.enqueue(item("cb-2"), p)
    assert len((await queue.take()).released) == 1
    queue.time_offset_ms = 3_600_000
    taken = await queue.take()
    assert (taken.released, taken.expired) == ([], 1)
    assert (await queue.stats(p)).expired == 1


async def test_pause_and_resume(queue: Queue) -> None:
    p = policy(rate={"limit": 100, "period": "1s", "burst": 100})
    await reconcile(queue, p.model_copy(update={"paused": True}))
    for i in range(5):
        await queue.enqueue(item(f"cb-{i}"), p.model_copy(update={"paused": True}))
    queue.time_offset_ms = 10_000
    assert (await queue.take()).released == []
    await reconcile(queue, p)
    assert len((await queue.take()).released) == 5


async def test_stale_revision_never_overwrites(queue: Queue) -> None:
    p = policy()
    newer = await reconcile(
        queue, p.model_copy(update={"rate": p.rate.model_copy(update={"limit": 50})})
    )
    assert newer.params == "written"
    assert await queue.apply_policy(p.with_revision(newer.revision - 1)) == "stale"
    assert await queue.redis.hget(keys.params(p.key), "lim") == b"50"
    again = await reconcile(
        queue, p.model_copy(update={"rate": p.rate.model_copy(update={"limit": 50})})
    )
    assert (again.changed, again.params) == (False, "unchanged")


async def test_overflow_refuses_beyond_what_fits_in_the_expiration(queue: Queue) -> None:
    p = policy(rate={"limit": 1, "period": "1m"}, expiration="PT5M", overflow="Fail")
    await reconcile(queue, p)
    statuses = [(await queue.enqueue(item(f"cb-{i}"), p)).status for i in range(8)]
    assert statuses[:6] == ["queued"] * 6
    assert statuses[6:] == ["overflow", "overflow"]
    blocking = p.model_copy(update={"overflow": "Block"})
    assert (await queue.enqueue(item("cb-x"), blocking)).status == "queued"


async def test_retire_drain_and_flush(queue: Queue) -> None:
    p = policy(rate={"limit": 1, "period": "1h"})
    await reconcile(queue, p)
    for i in range(4):
        await queue.enqueue(item(f"cb-{i}"), p)
    first = await retire(queue, p, "FAIL_CONTINUE")
    assert first.remaining == 4
    taken = (await queue.take()).released
    assert {r.execution_state for r in taken} == {"FAIL_CONTINUE"}
    assert len(taken) == 4
    assert (await retire(queue, p, "FAIL_CONTINUE")).remaining == 4  # still in flight
    await queue.ack(taken)
    assert (await retire(queue, p, "FAIL_CONTINUE")).done
    assert await queue.redis.exists(keys.params(p.key), keys.queue_list(p.key, "shared")) == 0


async def test_retire_drain_resumes_a_paused_policy(queue: Queue) -> None:
    p = policy(rate={"limit": 100, "period": "1s", "burst": 10}, paused=True)
    await reconcile(queue, p)
    for i in range(3):
        await queue.enqueue(item(f"cb-{i}"), p)
    assert (await queue.take()).released == []
    assert (await retire(queue, p, "Drain")).remaining == 3
    taken = (await queue.take()).released
    assert [r.execution_state for r in taken] == ["SUCCESS"] * 3
    await queue.ack(taken)
    assert (await retire(queue, p, "Drain")).done


async def test_scripts_reload_after_redis_forgets_them(queue: Queue, engine_redis: Any) -> None:
    p = policy(rate={"limit": 100, "period": "1s", "burst": 10})
    await reconcile(queue, p)
    await engine_redis.script_flush()  # as after a restart without persistence of scripts
    await queue.enqueue(item("cb-1"), p)
    await engine_redis.script_flush()
    taken = (await queue.take()).released  # a pipeline of 32 calls, every one NOSCRIPT at first
    await engine_redis.script_flush()
    assert await queue.ack(taken) == 1


async def test_per_workflow_queues_have_their_own_rate(queue: Queue) -> None:
    p = policy(rate={"limit": 1, "period": "1h"}, scope="PerWorkflow")
    await reconcile(queue, p)
    for wf in (1, 2, 3):
        for i in range(2):
            await queue.enqueue(item(f"wf{wf}-{i}", workflow=wf), p)
    taken = sorted(r.callback_id for r in (await queue.take()).released)
    assert taken == ["wf1-0", "wf2-0", "wf3-0"]
    assert (await queue.stats(p)).queues == 3


async def test_min_hold_keeps_fresh_executions_back(queue: Queue) -> None:
    p = policy(rate={"limit": 100, "period": "1s", "burst": 10})
    await reconcile(queue, p)
    await queue.enqueue(item("cb-1"), p)
    queue.time_offset_ms = 500
    await queue.enqueue(item("cb-2"), p)
    shard = [keys.shard_of(p.key)]
    held = await queue.take(shard, min_hold_seconds=1.0)
    assert held.released == []
    queue.time_offset_ms = 1100  # cb-1 is old enough, cb-2 is not yet
    first = await queue.take(shard, min_hold_seconds=1.0)
    assert [r.callback_id for r in first.released] == ["cb-1"]
    due = first.next_due[shard[0]]
    assert abs(due - (first.released[0].enqueued_at + 1.5)) < 0.05  # exactly when cb-2 is ready
    queue.time_offset_ms = 1600
    assert [r.callback_id for r in (await queue.take(shard, min_hold_seconds=1.0)).released] == [
        "cb-2"
    ]


async def test_renew_extends_live_leases_only(queue: Queue, engine_redis: Any) -> None:
    """A dispatcher keeps what it holds while HubSpot is slow to answer; what it lost (the
    lease ran out, or it was settled) is reported so it is not sent."""
    p = policy(rate={"limit": 100, "period": "1s", "burst": 10})
    await reconcile(queue, p)
    for i in range(4):
        await queue.enqueue(item(f"cb-{i}"), p)
    held = (await queue.take()).released
    await queue.ack(held[:1])
    queue.time_offset_ms = 20_000  # 10 s of the 30 s lease left
    assert await queue.renew(held, 60) == {"cb-1", "cb-2", "cb-3"}
    queue.time_offset_ms = 75_000  # past the first lease, inside the renewed one
    assert await queue.reap_expired_leases() == 0
    assert await queue.renew(held[1:2], 5) == {"cb-1"}  # never shortened
    queue.time_offset_ms = 81_000
    assert await queue.reap_expired_leases() == 3
    assert await queue.renew(held, 60) == set()  # ran out: someone else's to send now
    stats = await queue.stats(p)
    assert (stats.depth, stats.in_flight) == (3, 0)


async def test_history_events_name_callback_ids_as_release_0_1_0_reads_them(
    queue: Queue, engine_redis: Any
) -> None:
    """During a rollout the previous release's history writers read the same event streams: a
    list of ordinary ids stays comma-joined; only ids a comma cannot separate (one holding a
    comma, or a list starting with "[") take the JSON form, which folding reads back."""
    p = policy(rate={"limit": 100, "period": "1s", "burst": 10})
    await reconcile(queue, p)
    shard = keys.shard_of(p.key)
    for cb in ("cb-1", "cb-2"):
        await queue.enqueue(item(cb), p)
    await queue.take()
    for cb in ("odd,one", "[bracket"):
        await queue.enqueue(item(cb), p)
        await queue.take()
    events = await engine_redis.xrange(keys.events(shard))
    released = [e[b"cbs"].decode() for _id, e in events if e[b"t"] == b"rel"]
    assert released == ["cb-1,cb-2", '["odd,one"]', '["[bracket"]']
    assert [event_callback_ids({"cbs": cbs}) for cbs in released] == [
        ["cb-1", "cb-2"],
        ["odd,one"],
        ["[bracket"],
    ]
