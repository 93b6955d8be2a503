"""The HubSpot completer against the simulator, with real Redis and PostgreSQL."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import aiohttp

from tests.fixtures.builders import item as queue_item
from tests.fixtures.builders import policy
from tests.fixtures.completer_on_simulator import drain, released, setup
from tests.fixtures.hubspot_simulator import RunningSimulator, StartSimulator
from tests.fixtures.metric_samples import sample
from throttle.dispatcher.drain import ALREADY_COMPLETED_NOTE, Dispatcher
from throttle.dispatcher.hubspot_completer import HubSpotCompleter
from throttle.engine.policy import Policy
from throttle.engine.priority import parse_priority
from throttle.engine.queue import Queue, Released
from throttle.engine.registry import reconcile
from throttle.hubspot.budget import PortalBudget
from throttle.hubspot.client import HubSpotClient
from throttle.hubspot.tokens import TokenManager, TokenStore
from throttle.metrics import Metrics


async def test_1000_callbacks_in_10_requests(
    hubspot_sim: RunningSimulator, store: TokenStore, session: aiohttp.ClientSession, redis: Any
) -> None:
    items = released(1, 1000)
    metrics = Metrics()
    completer = await setup(hubspot_sim, store, session, redis, 1, items, metrics=metrics)
    result = await completer.complete(1, items)
    assert len(result.completed) == 1000
    assert not result.retry
    assert not result.failed
    stats = hubspot_sim.sim.portal(1)
    assert stats.completion_requests == 10
    completion = hubspot_sim.sim.callbacks["cb-1-7"].output_fields
    assert completion == {
        "hs_execution_state": "SUCCESS",
        "throttle_status": "released",
        "throttle_wait_seconds": 12,
        "throttle_policy": "enrich",
    }
    assert sample(metrics, "throttle_hubspot_callbacks_total", result="completed") == 1000


async def test_the_completion_says_the_priority_and_why_it_was_not_used(
    hubspot_sim: RunningSimulator, store: TokenStore, session: aiohttp.ClientSession, redis: Any
) -> None:
    """HubSpot sees the priority the record was held at; an unreadable one with the reason a
    builder can act on; an action without the field gets exactly the fields it always got."""
    plain, given, unreadable = released(3, 3)
    given = replace(given, priority=parse_priority("HIGH"))
    unreadable = replace(unreadable, priority=parse_priority("urgent"))
    items = [plain, given, unreadable]
    completer = await setup(hubspot_sim, store, session, redis, 3, items)
    assert len((await completer.complete(3, items)).completed) == 3
    seen = {i.callback_id: hubspot_sim.sim.callbacks[i.callback_id].output_fields for i in items}
    assert "throttle_priority" not in seen[plain.callback_id]
    assert seen[given.callback_id]["throttle_priority"] == 9
    assert "throttle_priority_reason" not in seen[given.callback_id]
    assert seen[unreadable.callback_id]["throttle_priority"] == 0
    assert "not 0-9 or HIGH" in seen[unreadable.callback_id]["throttle_priority_reason"]


async def test_a_bad_callback_does_not_sink_its_batch(
    hubspot_sim: RunningSimulator, store: TokenStore, session: aiohttp.ClientSession, redis: Any
) -> None:
    items = released(2, 100)
    completer = await setup(hubspot_sim, store, session, redis, 2, items)
    hubspot_sim.sim.expire(["cb-2-10"])
    # queued long ago: HubSpot not knowing it is final (a young one is retried, see below)
    unknown = Released("never-registered", 2, "enrich", "shared", time.time() - 300, 0, 1.0)
    result = await completer.complete(2, [*items[:50], unknown, *items[50:]])
    assert sorted(result.completed) == sorted(
        i.callback_id for i in items if i.callback_id != "cb-2-10"
    )
    assert set(result.failed) == {"never-registered", "cb-2-10"}
    assert "HTTP 400" in result.failed["cb-2-10"]
    assert not result.retry
    report = hubspot_sim.sim.portal(2)
    assert report.duplicates == 0
    assert report.completion_requests <= 2 * 2 * 8  # two bisections of a 101-batch


async def test_a_callback_hubspot_does_not_know_yet_is_retried_while_young(
    hubspot_sim: RunningSimulator, store: TokenStore, session: aiohttp.ClientSession, redis: Any
) -> None:
    """Our BLOCK answer can be lost (a webhook pod killed after enqueueing): until HubSpot's
    retry of the delivery arrives, HubSpot does not know the callback is waiting."""
    items = released(2, 3)
    completer = await setup(hubspot_sim, store, session, redis, 2, items)
    young = Released("not-yet-blocked", 2, "enrich", "shared", time.time() - 5, 0, 1.0)
    result = await completer.complete(2, [*items, young])
    assert sorted(result.completed) == sorted(i.callback_id for i in items)
    assert result.retry == ["not-yet-blocked"]
    assert not result.failed
    assert result.retry_after > 0


async def test_named_offenders_are_taken_out_in_one_step(
    start_simulator: StartSimulator, store: TokenStore, session: aiohttp.ClientSession, redis: Any
) -> None:
    running = await start_simulator(name_offenders_in_errors=True)
    items = released(3, 100)
    completer = await setup(running, store, session, redis, 3, items)
    running.sim.expire(["cb-3-5", "cb-3-60"])
    result = await completer.complete(3, items)
    assert set(result.failed) == {"cb-3-5", "cb-3-60"}
    assert len(result.completed) == 98
    assert running.sim.portal(3).completion_requests == 2


async def test_429_storm_one_429_per_window_and_nothing_lost(
    start_simulator: StartSimulator, store: TokenStore, session: aiohttp.ClientSession, redis: Any
) -> None:
    window = 1.0
    running = await start_simulator(rate_window_s=window)
    items = released(4, 450)
    completer = await setup(running, store, session, redis, 4, items, window_s=window)
    running.sim.set_faults(storm_until=time.time() + 2.5)
    done, failed, results = await drain(completer, 4, items)
    assert done == {i.callback_id for i in items}
    assert not failed
    stats = running.sim.portal(4)
    assert stats.rate_limited >= 2
    times = sorted(stats.rate_limited_at)
    for earlier, later in itertools.pairwise(times):
        assert later - earlier >= window * 0.99  # at most one 429 per portal per window
    assert stats.duplicates == 0
    assert any(r.retry_after >= window * 0.99 for r in results)


async def test_budget_paces_a_portal_and_says_how_long_to_wait(
    hubspot_sim: RunningSimulator, store: TokenStore, session: aiohttp.ClientSession, redis: Any
) -> None:
    items = released(5, 500)
    completer = await setup(hubspot_sim, store, session, redis, 5, items, budget=2, window_s=1.0)
    result = await completer.complete(5, items)
    assert len(result.completed) == 200
    assert len(result.retry) == 300
    assert result.retry_after > 0.2
    assert result.retry == [i.callback_id for i in items[200:]]  # order kept for the queue head
    done, _, _ = await drain(completer, 5, [i for i in items if i.callback_id in result.retry])
    assert len(done) == 300
    assert hubspot_sim.sim.portal(5).rate_limited == 0


async def test_401_refreshes_once_and_resends(
    start_simulator: StartSimulator, store: TokenStore, session: aiohttp.ClientSession, redis: Any
) -> None:
    skew = [0.0]
    running = await start_simulator(clock=lambda: time.time() + skew[0])
    items = released(6, 10)
    completer = await setup(running, store, session, redis, 6, items)
    skew[0] = 1801.0  # HubSpot thinks the token expired; our clock does not
    result = await completer.complete(6, items)
    assert len(result.completed) == 10
    assert running.sim.portal(6).refreshes == 1
    assert running.sim.portal(6).unauthorized == 1


async def test_revoked_install_stops_the_portal(
    start_simulator: StartSimulator, store: TokenStore, session: aiohttp.ClientSession, redis: Any
) -> None:
    running = await start_simulator(access_token_ttl_s=1800)
    items = released(7, 5)
    metrics = Metrics()
    completer = await setup(running, store, session, redis, 7, items, metrics=metrics)
    running.sim.revoke(7, access_tokens=True)
    result = await completer.complete(7, items)
    assert result.portal_stopped is not None
    assert "BAD_REFRESH_TOKEN" in result.portal_stopped
    assert set(result.failed) == {i.callback_id for i in items}
    assert not result.completed
    installation = await store.installation(7)
    assert installation is not None
    assert installation.status == "uninstalled"
    assert sample(metrics, "throttle_portals_uninstalled_total", cause="refresh_refused") == 1
    again = await completer.complete(7, items)
    assert again.portal_stopped == result.portal_stopped


async def test_refused_client_secret_keeps_everything_waiting_then_completes(
    start_simulator: StartSimulator, store: TokenStore, session: aiohttp.ClientSession, redis: Any
) -> None:
    """The app's client secret refused at the token endpoint while the portal's token has
    expired: nothing fails, nobody is uninstalled; once HubSpot accepts it again, all complete."""
    running = await start_simulator(access_token_ttl_s=1)
    items = released(17, 30)
    metrics = Metrics()
    completer = await setup(running, store, session, redis, 17, items, metrics=metrics)
    running.sim.set_faults(reject_client_secret_seconds=3600)
    await asyncio.sleep(1.1)  # the access token expired
    result = await completer.complete(17, items)
    assert result.retry == [i.callback_id for i in items]
    assert not result.failed
    assert result.portal_stopped is None
    assert result.retry_after >= 1.0
    again = await completer.complete(17, items)  # within the probe interval: HubSpot not asked
    assert again.retry == result.retry
    assert running.sim.portal(17).client_refusals == 1
    assert running.sim.portal(17).completion_requests == 0
    installation = await store.installation(17)
    assert installation is not None
    assert installation.status == "installed"
    assert metrics.portals_uninstalled.labels("refresh_refused")._value.get() == 0
    running.sim.set_faults(reject_client_secret_until=0.0)
    done, failed, _ = await drain(completer, 17, items)
    assert done == {i.callback_id for i in items}
    assert not failed
    assert running.sim.portal(17).duplicates == 0


async def test_5xx_is_retried(
    hubspot_sim: RunningSimulator, store: TokenStore, session: aiohttp.ClientSession, redis: Any
) -> None:
    items = released(8, 150)
    completer = await setup(hubspot_sim, store, session, redis, 8, items)
    hubspot_sim.sim.set_faults(error_ratio=1.0)
    result = await completer.complete(8, items)
    assert result.retry == [i.callback_id for i in items]
    assert result.retry_after >= 1.0
    assert hubspot_sim.sim.portal(8).completion_requests == 1  # no second error in a row
    hubspot_sim.sim.set_faults(error_ratio=0.0)
    done, failed, _ = await drain(completer, 8, items)
    assert len(done) == 150
    assert not failed


async def test_build_completer_from_settings(
    hubspot_sim: RunningSimulator,
    make_settings: Any,
    pool: Any,
    session: aiohttp.ClientSession,
    redis: Any,
) -> None:
    from throttle.dispatcher.hubspot_completer import build_completer
    from throttle.hubspot.crypto import TokenCipher

    config = hubspot_sim.sim.config
    settings = make_settings(
        hubspot_api_base=hubspot_sim.url,
        hubspot_client_id=config.client_id,
        hubspot_client_secret=config.client_secret,
    )
    store = TokenStore(pool, TokenCipher(settings.encryption_keys))
    items = released(9, 3)
    await setup(hubspot_sim, store, session, redis, 9, items)
    metrics = Metrics()
    completer = build_completer(settings, session, redis, pool, metrics)
    result = await completer.complete(9, items)
    assert len(result.completed) == 3
    assert (
        sample(metrics, "throttle_hubspot_requests_total", operation="complete_batch", status="204")
        == 1
    )


async def test_storm_with_three_pods_costs_one_429_per_window(
    start_simulator: StartSimulator,
    store: TokenStore,
    session: aiohttp.ClientSession,
    redis: Any,
    redis_server: Any,
) -> None:
    """Three dispatchers complete the same portal at once through a 429 storm."""
    window = 1.0
    running = await start_simulator(rate_window_s=window)
    items = released(10, 900)
    await setup(running, store, session, redis, 10, items, window_s=window)
    client = HubSpotClient(session, running.url, "sim-client-id", "sim-client-secret")
    pods = [redis_server.client() for _ in range(3)]
    completers = [
        HubSpotCompleter(
            client,
            TokenManager(store, client, pod),
            PortalBudget(pod, 100, window),
            max_budget_wait_s=0.2,
        )
        for pod in pods
    ]
    running.sim.set_faults(storm_until=time.time() + 2.5)
    try:
        shares = [items[i::3] for i in range(3)]
        outcomes = await asyncio.gather(
            *(drain(c, 10, share) for c, share in zip(completers, shares, strict=True))
        )
    finally:
        for pod in pods:
            await pod.aclose()
    done = set().union(*(o[0] for o in outcomes))
    assert done == {i.callback_id for i in items}
    stats = running.sim.portal(10)
    assert stats.rate_limited >= 2
    times = sorted(stats.rate_limited_at)
    for earlier, later in itertools.pairwise(times):
        assert later - earlier >= window * 0.99
    assert stats.duplicates == 0


async def test_postgres_outage_defers_and_loses_nothing(
    hubspot_sim: RunningSimulator,
    store: TokenStore,
    pool: Any,
    session: aiohttp.ClientSession,
    redis: Any,
) -> None:
    items = released(11, 20)
    completer = await setup(hubspot_sim, store, session, redis, 11, items)
    first = await completer.complete(11, items[:10])  # the token is now in memory
    assert len(first.completed) == 10
    await pool.close()  # PostgreSQL gone for this process
    second = await completer.complete(11, items[10:])
    assert len(second.completed) == 10  # a fresh token in memory needs no database
    cold = HubSpotCompleter(
        HubSpotClient(session, hubspot_sim.url, "sim-client-id", "sim-client-secret"),
        TokenManager(store, HubSpotClient(session, hubspot_sim.url), redis),
        PortalBudget(redis, 100, 10.0),
    )
    more = released(11, 3, prefix="late")
    for item in more:
        hubspot_sim.sim.add_blocked(item.callback_id, 11)
    deferred = await cold.complete(11, more)
    assert deferred.retry == [i.callback_id for i in more]
    assert deferred.retry_after > 0
    assert not deferred.failed
    assert deferred.portal_stopped is None


async def test_redis_outage_defers_and_loses_nothing(
    hubspot_sim: RunningSimulator, store: TokenStore, session: aiohttp.ClientSession, redis: Any
) -> None:
    import redis.asyncio as aioredis

    from throttle_dev.localenv import free_port

    items = released(12, 5)
    completer = await setup(hubspot_sim, store, session, redis, 12, items)
    dead = aioredis.Redis(port=free_port(), socket_connect_timeout=0.2)
    try:
        broken = HubSpotCompleter(
            HubSpotClient(session, hubspot_sim.url, "sim-client-id", "sim-client-secret"),
            completer.tokens,
            PortalBudget(dead, 100, 10.0),
        )
        result = await broken.complete(12, items)
    finally:
        await dead.aclose()
    assert result.retry == [i.callback_id for i in items]
    assert not result.completed
    assert hubspot_sim.sim.portal(12).completion_requests == 0


def resent(items: Sequence[Released]) -> list[Released]:
    """The same executions taken a second time (after a requeue or a lapsed lease)."""
    return [replace(i, attempts=2) for i in items]


async def test_already_completed_is_completed_and_costs_no_more_calls(
    hubspot_sim: RunningSimulator, store: TokenStore, session: aiohttp.ClientSession, redis: Any
) -> None:
    """An earlier request went through but its answer was lost: the re-send is refused as
    "already completed" (harsh: the whole batch, offenders unnamed). Those are completed, not
    failed, and only what HubSpot has not applied is sent again: no splitting."""
    items = released(13, 100)
    sim = hubspot_sim.sim
    completer = await setup(hubspot_sim, store, session, redis, 13, items)
    sim.set_faults(error_after_apply_ratio=1.0)
    lost = await completer.complete(13, items[:40])
    assert lost.retry == [i.callback_id for i in items[:40]]
    sim.set_faults(error_after_apply_ratio=0.0)
    before = sim.portal(13).completion_requests

    # the 40 again (sent before) with 60 never sent: one refusal, then the 60 alone
    mixed = await completer.complete(13, [*resent(items[:40]), *items[40:]])
    assert not mixed.failed
    assert not mixed.retry
    assert sim.portal(13).completion_requests - before == 2
    assert sorted(mixed.already_completed) == sorted(i.callback_id for i in items[:40])
    assert sorted(mixed.completed) == sorted(i.callback_id for i in items[40:])

    # all of a batch already completed: that one refusal settles it
    again = await completer.complete(13, resent(items[:50]))
    assert not again.failed
    assert not again.completed
    assert sim.portal(13).completion_requests - before == 3
    assert sorted(again.already_completed) == sorted(i.callback_id for i in items[:50])
    assert len(sim.completions) == 100


async def test_already_completed_when_the_count_does_not_tell_which(
    hubspot_sim: RunningSimulator, store: TokenStore, session: aiohttp.ClientSession, redis: Any
) -> None:
    """Ten sent before, only four of them applied: the batch is halved until each answer is
    unambiguous, and still nothing is recorded failed."""
    items = released(14, 20)
    sim = hubspot_sim.sim
    completer = await setup(hubspot_sim, store, session, redis, 14, items)
    assert len((await completer.complete(14, items[:4])).completed) == 4
    result = await completer.complete(14, [*resent(items[:10]), *items[10:]])
    assert not result.failed
    assert not result.retry
    assert sorted(result.already_completed) == sorted(i.callback_id for i in items[:4])
    assert sorted(result.completed) == sorted(i.callback_id for i in items[4:])
    assert len(sim.completions) == 20


async def test_each_batch_goes_with_a_token_valid_when_it_goes(
    start_simulator: StartSimulator, store: TokenStore, session: aiohttp.ClientSession, redis: Any
) -> None:
    """HubSpot answers slowly: the second batch must not go with the token the first one
    took, which expired while it waited."""
    running = await start_simulator(access_token_ttl_s=2)
    items = released(15, 200)
    completer = await setup(running, store, session, redis, 15, items)
    running.sim.set_faults(completion_answer_delay_ms=2500)
    result = await completer.complete(15, items)
    assert len(result.completed) == 200
    assert running.sim.portal(15).unauthorized == 0
    assert running.sim.portal(15).completion_requests == 2


async def _dispatch_until(
    queue: Queue, dispatcher: Dispatcher, p: Policy, done: int, timeout_s: float = 20.0
) -> None:
    stop = asyncio.Event()
    task = asyncio.create_task(dispatcher.run(stop))
    try:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            stats = await queue.stats(p)
            if stats.acked + stats.failed >= done:
                break
            await asyncio.sleep(0.05)
    finally:
        stop.set()
        await task


async def test_dispatcher_settles_each_batch_when_hubspot_answers_it(
    hubspot_sim: RunningSimulator, store: TokenStore, session: aiohttp.ClientSession, redis: Any
) -> None:
    """HubSpot applies at once but answers 400 ms later; the portal's 300 executions take
    three batches, longer together than one batch's deadline and than the lease. Each batch
    is acknowledged as its answer comes: nothing handed back, sent twice or failed."""
    p = policy(name="slow", portal=16, rate={"limit": 1000, "period": "1s", "burst": 1000})
    queue = Queue(redis, lease_seconds=1.0)
    await reconcile(queue, p)
    blocked = released(16, 300)
    completer = await setup(hubspot_sim, store, session, redis, 16, blocked)
    for i in blocked:
        await queue.enqueue(queue_item(i.callback_id, portal=16), p)
    hubspot_sim.sim.set_faults(completion_answer_delay_ms=400)
    # one take releases all 300, so they are all held at once
    dispatcher = Dispatcher(queue, completer, Metrics(), queue_quota=300, complete_timeout=1.0)
    await _dispatch_until(queue, dispatcher, p, 300)
    stats = await queue.stats(p)
    assert (stats.acked, stats.failed, stats.requeued, stats.in_flight) == (300, 0, 0, 0)
    sim = hubspot_sim.sim.portal(16)
    assert (sim.completion_requests, sim.duplicates, sim.sent_twice) == (3, 0, 0)


async def test_a_batch_without_an_answer_is_requeued_and_its_resend_is_completed(
    hubspot_sim: RunningSimulator,
    store: TokenStore,
    session: aiohttp.ClientSession,
    redis: Any,
    database_url: str,
) -> None:
    """No answer before the batch's deadline: its outcome is unknown, so it goes back to its
    queue (never "failed"); HubSpot had applied it, and the re-send is recorded completed."""
    from throttle.dispatcher.history_writer import HistoryWriter
    from throttle.history.migrations import migrate
    from throttle.history.pool import create_pool

    p = policy(name="lost", portal=17, rate={"limit": 1000, "period": "1s", "burst": 1000})
    queue = Queue(redis, lease_seconds=5.0)
    await reconcile(queue, p)
    blocked = released(17, 50)
    completer = await setup(hubspot_sim, store, session, redis, 17, blocked)
    for i in blocked:
        await queue.enqueue(queue_item(i.callback_id, portal=17), p)
    sim = hubspot_sim.sim
    sim.set_faults(completion_answer_delay_ms=1500)
    dispatcher = Dispatcher(queue, completer, Metrics(), complete_timeout=0.5, retry_base=0.2)

    async def answer_promptly_once_applied() -> None:
        while not sim.completions:
            await asyncio.sleep(0.01)
        sim.set_faults(completion_answer_delay_ms=0)

    prompt = asyncio.create_task(answer_promptly_once_applied())
    await _dispatch_until(queue, dispatcher, p, 50)
    await prompt
    stats = await queue.stats(p)
    assert (stats.acked, stats.failed, stats.requeued) == (50, 0, 50)
    assert len(sim.completions) == 50
    assert sim.portal(17).completion_requests == 2  # the lost one, one re-send: no splitting

    await migrate(database_url)
    writer = HistoryWriter(redis, lambda: create_pool(database_url), Metrics())
    await writer.ensure_groups()
    while await writer.step():
        pass
    await writer.close()
    pool = await create_pool(database_url)
    try:
        rows = await pool.fetch("SELECT outcome, last_error FROM action_executions")
    finally:
        await pool.close()
    assert {(r["outcome"], r["last_error"]) for r in rows} == {
        ("completed", ALREADY_COMPLETED_NOTE)
    }
