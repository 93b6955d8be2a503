"""The HubSpot completer against the simulator, with real Redis and PostgreSQL."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Sequence
from typing import Any

import aiohttp

from tests.fixtures.hubspot_simulator import RunningSimulator, StartSimulator
from throttle.dispatcher.budget import PortalBudget
from throttle.dispatcher.complete import CompletionResult, Released
from throttle.dispatcher.hubspot_completer import HubSpotCompleter
from throttle.hubspot import HubSpotClient, TokenGrant
from throttle.metrics import Metrics
from throttle.tokens import TokenManager, TokenStore


def released(portal_id: int, n: int, prefix: str = "cb") -> list[Released]:
    return [
        Released(f"{prefix}-{portal_id}-{i}", portal_id, "enrich", "shared", time.time(), 0, 12.4)
        for i in range(n)
    ]


async def setup(
    running: RunningSimulator,
    store: TokenStore,
    session: aiohttp.ClientSession,
    redis: Any,
    portal_id: int,
    items: Sequence[Released],
    budget: int = 100,
    window_s: float = 10.0,
    metrics: Metrics | None = None,
) -> HubSpotCompleter:
    grant = running.sim.issue_tokens(portal_id)
    await store.save(
        portal_id,
        TokenGrant(grant["access_token"], grant["refresh_token"], grant["expires_in"]),
    )
    for item in items:
        running.sim.add_blocked(item.callback_id, portal_id)
    client = HubSpotClient(session, running.url, "sim-client-id", "sim-client-secret")
    tokens = TokenManager(store, client, redis, metrics)
    return HubSpotCompleter(
        client, tokens, PortalBudget(redis, budget, window_s), metrics, max_budget_wait_s=0.2
    )


async def drain(
    completer: HubSpotCompleter, portal_id: int, items: Sequence[Released], rounds: int = 50
) -> tuple[set[str], dict[str, str], list[CompletionResult]]:
    """What a dispatcher does: complete, put retries back, honour retry_after."""
    by_id = {i.callback_id: i for i in items}
    todo = list(items)
    done: set[str] = set()
    failed: dict[str, str] = {}
    results = []
    for _ in range(rounds):
        if not todo:
            break
        result = await completer.complete(portal_id, todo)
        results.append(result)
        done.update(result.completed)
        failed.update(result.failed)
        todo = [by_id[i] for i in result.retry]
        if todo:
            await asyncio.sleep(result.retry_after)
    return done, failed, results


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
    assert metrics.hubspot_callbacks.labels("completed")._value.get() == 1000


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
    assert metrics.portals_uninstalled.labels("refresh_refused")._value.get() == 1
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
    from throttle.crypto import TokenCipher
    from throttle.dispatcher.hubspot_completer import build_completer

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
    assert metrics.hubspot_requests.labels("complete_batch", "204")._value.get() == 1


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

    from throttle.localenv import free_port

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
