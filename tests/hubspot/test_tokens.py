"""Token store and manager against real PostgreSQL, real Redis and the simulator."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from tests.fixtures.hubspot_simulator import StartSimulator
from tests.fixtures.hubspot_tokens import new_key
from tests.fixtures.metric_samples import sample
from throttle.dispatcher.history_writer import HistoryWriter
from throttle.engine import keys
from throttle.hubspot.client import HubSpotClient, TokenGrant
from throttle.hubspot.config_fault import read_shared
from throttle.hubspot.crypto import CryptoError, TokenCipher, UnknownKeyError
from throttle.hubspot.tokens import (
    ConfigFaultActive,
    NotInstalled,
    PortalStopped,
    TokenManager,
    TokenStore,
    purge_disabled_tokens,
)
from throttle.metrics import Metrics

GRANT = TokenGrant("access-AAAA-secret", "refresh-BBBB-secret", 1800, scopes=("automation",))


async def test_raw_row_is_unreadable_without_the_key(
    store: TokenStore, pool: Any, cipher: TokenCipher
) -> None:
    await store.save(42, GRANT)
    row = await pool.fetchrow("SELECT * FROM oauth_tokens WHERE portal_id = 42")
    raw = b"".join(bytes(v) if isinstance(v, bytes | bytearray) else str(v).encode() for v in row)
    assert b"access-AAAA" not in raw
    assert b"refresh-BBBB" not in raw
    assert row["key_id"] == cipher.current_key_id
    # Another key cannot open it; the same ciphertext moved to another portal does not open.
    with pytest.raises(UnknownKeyError):
        await TokenStore(pool, TokenCipher([new_key()])).load(42)
    await store.save(43, GRANT)
    await pool.execute(
        "UPDATE oauth_tokens SET access_token = $1 WHERE portal_id = 43", row["access_token"]
    )
    with pytest.raises(CryptoError):
        await store.load(43)
    loaded = await store.load(42)
    assert loaded is not None
    assert loaded.access_token == GRANT.access_token
    assert "access-AAAA" not in repr(loaded)


async def test_rotation_reencrypts_every_row_then_old_key_can_go(pool: Any) -> None:
    old, new = new_key(), new_key()
    old_store = TokenStore(pool, TokenCipher([old]))
    for portal in range(1, 251):
        await old_store.save(portal, GRANT)
    both = TokenStore(pool, TokenCipher([new, old]))  # newest first
    report = await both.rotate(chunk=100)
    assert (report.rows, report.reencrypted, report.key_id) == (250, 250, new.key_id)
    assert (
        await pool.fetchval("SELECT count(*) FROM oauth_tokens WHERE key_id <> $1", new.key_id) == 0
    )
    assert (await both.rotate()).reencrypted == 0  # idempotent
    only_new = TokenStore(pool, TokenCipher([new]))
    for portal in (1, 125, 250):
        loaded = await only_new.load(portal)
        assert loaded is not None
        assert loaded.refresh_token == GRANT.refresh_token
    with pytest.raises(UnknownKeyError):
        await old_store.load(1)


async def test_uninstall_disables_tokens_restore_undoes_it_then_purge_deletes_them(
    store: TokenStore, pool: Any, redis: Any
) -> None:
    await store.save(5, GRANT)
    assert await store.mark_uninstalled(5, "uninstalled: test") is True
    assert await store.mark_uninstalled(5, "again") is False
    installation = await store.installation(5)
    assert installation is not None
    assert installation.status == "uninstalled"
    assert installation.uninstall_reason == "uninstalled: test"
    assert installation.tokens_disabled_at is not None
    assert await store.load(5) is None  # disabled: never handed out...
    generation = await pool.fetchval("SELECT generation FROM oauth_tokens WHERE portal_id = 5")
    assert await store.save_refreshed(5, GRANT, time.time(), generation) is None  # ...nor refreshed
    assert await pool.fetchval("SELECT count(*) FROM oauth_tokens WHERE portal_id = 5") == 1

    # A mistaken uninstall is undone with the very tokens it had.
    assert await store.restore(5) == "restored"
    restored = await store.load(5)
    assert restored is not None
    assert restored.refresh_token == GRANT.refresh_token
    again = await store.installation(5)
    assert again is not None
    assert (again.status, again.uninstall_reason, again.tokens_disabled_at) == (
        "installed",
        None,
        None,
    )
    assert await store.restore(5) == "installed"
    assert await store.restore(404) == "unknown"

    # Within the grace period pruning keeps them; past it, the dispatchers' pruning deletes them.
    await store.save(6, GRANT)
    await store.mark_uninstalled(5, "uninstalled: again")
    writer = HistoryWriter(redis, _shared(pool), Metrics(), uninstall_grace_days=7)
    await writer.prune_once()
    assert await pool.fetchval("SELECT count(*) FROM oauth_tokens") == 2
    await pool.execute(
        "UPDATE oauth_tokens SET disabled_at = now() - interval '8 days' WHERE portal_id = 5"
    )
    await writer.prune_once()
    assert await pool.fetchval("SELECT array_agg(portal_id) FROM oauth_tokens") == [6]
    assert await store.restore(5) == "no_tokens"  # only a reinstall brings it back now
    gone = await store.installation(5)
    assert gone is not None
    assert (gone.status, gone.uninstall_reason) == ("uninstalled", "uninstalled: again")
    assert gone.tokens_disabled_at is None
    await store.save(5, GRANT)  # reinstall
    back = await store.installation(5)
    assert back is not None
    assert (back.status, back.uninstall_reason) == ("installed", None)
    assert await purge_disabled_tokens(pool, 0) == 0  # nothing disabled: nothing purged


def _shared(pool: Any) -> Any:
    async def factory() -> Any:
        return pool

    return factory


@contextlib.asynccontextmanager
async def _pods(
    n: int,
    store: TokenStore,
    url: str,
    session: aiohttp.ClientSession,
    redis_server: Any,
    metrics: Metrics,
    **options: Any,
) -> AsyncIterator[list[TokenManager]]:
    """`n` pods' token managers, each on its own Redis connection (closed afterwards);
    `options` go to every `TokenManager`."""
    redis_clients = [redis_server.client() for _ in range(n)]
    try:
        yield [
            TokenManager(
                store,
                HubSpotClient(session, url, "sim-client-id", "sim-client-secret"),
                client,
                metrics,
                **options,
            )
            for client in redis_clients
        ]
    finally:
        for client in redis_clients:
            await client.aclose()


async def test_refresh_before_expiry_exactly_once_across_three_pods(
    start_simulator: StartSimulator,
    store: TokenStore,
    session: aiohttp.ClientSession,
    redis_server: Any,
    redis: Any,
) -> None:
    running = await start_simulator(access_token_ttl_s=4)
    sim = running.sim
    grant = sim.issue_tokens(77)
    await store.save(77, TokenGrant(grant["access_token"], grant["refresh_token"], 4))
    metrics = Metrics()
    async with _pods(
        3, store, running.url, session, redis_server, metrics, refresh_margin_s=300
    ) as managers:
        first = await asyncio.gather(*(m.access_token(77) for m in managers))
        assert set(first) == {grant["access_token"]}  # 4 s left, margin min(300, 2 s): fresh
        await asyncio.sleep(2.2)  # inside the margin, before expiry
        tokens = await asyncio.gather(*(m.access_token(77) for _ in range(5) for m in managers))
        assert len(set(tokens)) == 1
        assert tokens[0] != grant["access_token"]
        assert sim.portal(77).refreshes == 1
        assert sim.portal(77).refresh_failures == 0
        assert sim.portal(77).unauthorized == 0  # refreshed before, not after, expiry
        stored = await store.load(77)
        assert stored is not None
        assert stored.refresh_token != grant["refresh_token"]  # the rotated one is kept
        assert sim.refresh_tokens[stored.refresh_token].revoked is False
        assert sample(metrics, "throttle_token_refreshes_total", result="ok") == 1


async def test_revoked_refresh_token_marks_portal_uninstalled(
    start_simulator: StartSimulator,
    store: TokenStore,
    session: aiohttp.ClientSession,
    redis_server: Any,
    redis: Any,
) -> None:
    running = await start_simulator(access_token_ttl_s=2)
    grant = running.sim.issue_tokens(88)
    await store.save(88, TokenGrant(grant["access_token"], grant["refresh_token"], 2))
    running.sim.revoke(88)
    metrics = Metrics()
    async with _pods(
        2, store, running.url, session, redis_server, metrics, refresh_margin_s=300
    ) as managers:
        await asyncio.sleep(1.1)
        results = await asyncio.gather(
            *(m.access_token(88) for m in managers), return_exceptions=True
        )
        assert all(isinstance(r, PortalStopped) for r in results), results
        assert "refresh token refused (HTTP 400 BAD_REFRESH_TOKEN)" in str(results[0])
        installation = await store.installation(88)
        assert installation is not None
        assert installation.status == "uninstalled"
        assert "BAD_REFRESH_TOKEN" in (installation.uninstall_reason or "")
        assert installation.tokens_disabled_at is not None  # kept for the grace period
        assert running.sim.portal(88).refresh_failures == 1  # only one pod asked
        assert sample(metrics, "throttle_portals_uninstalled_total", cause="refresh_refused") == 1
        with pytest.raises(PortalStopped):
            await managers[0].access_token(88)
        with pytest.raises(NotInstalled):
            await managers[0].access_token(99)


async def test_a_401_forces_one_refresh(
    start_simulator: StartSimulator,
    store: TokenStore,
    session: aiohttp.ClientSession,
    redis: Any,
) -> None:
    running = await start_simulator(access_token_ttl_s=1800)
    grant = running.sim.issue_tokens(5)
    await store.save(5, TokenGrant(grant["access_token"], grant["refresh_token"], 1800))
    manager = TokenManager(
        store, HubSpotClient(session, running.url, "sim-client-id", "sim-client-secret"), redis
    )
    assert await manager.access_token(5) == grant["access_token"]
    fresh = await manager.access_token(5, rejected=grant["access_token"])
    assert fresh != grant["access_token"]
    assert await manager.access_token(5, rejected=grant["access_token"]) == fresh
    assert running.sim.portal(5).refreshes == 1


async def test_refused_client_secret_uninstalls_nobody_and_clears_by_itself_once_fixed(
    start_simulator: StartSimulator,
    store: TokenStore,
    session: aiohttp.ClientSession,
    redis_server: Any,
    redis: Any,
) -> None:
    """HubSpot refuses the app's client secret (400 BAD_CLIENT_SECRET, the status a dead refresh
    token gets too): two pods keep the portal installed and its tokens, say why, ask HubSpot
    once per probe interval, and go on by themselves once the secret is accepted again."""
    running = await start_simulator(access_token_ttl_s=4)
    sim = running.sim
    grant = sim.issue_tokens(66)
    await store.save(66, TokenGrant(grant["access_token"], grant["refresh_token"], 4))
    sim.set_faults(reject_client_secret_seconds=3600)
    metrics = Metrics()
    async with _pods(
        2,
        store,
        running.url,
        session,
        redis_server,
        metrics,
        refresh_margin_s=300,
        config_probe_s=3.0,
    ) as managers:
        await asyncio.sleep(2.2)  # inside the margin (2 s): a refresh is due, the token valid
        kept = await asyncio.gather(*(m.access_token(66) for m in managers))
        assert kept == [grant["access_token"]] * 2  # used until it expires
        await asyncio.sleep(2.0)  # expired now: nothing to hand out, nothing to uninstall
        for _ in range(10):
            results = await asyncio.gather(
                *(m.access_token(66) for m in managers), return_exceptions=True
            )
            assert all(isinstance(r, ConfigFaultActive) for r in results), results
        assert "BAD_CLIENT_SECRET" in str(results[0])
        assert "sim-client-secret" not in str(results[0])
        assert sim.portal(66).client_refusals == 2  # one per pod in the probe interval, not 22

        installation = await store.installation(66)
        assert installation is not None
        assert (installation.status, installation.tokens_disabled_at) == ("installed", None)
        stored = await store.load(66)
        assert stored is not None
        assert stored.refresh_token == grant["refresh_token"]
        assert metrics.portals_uninstalled.labels("refresh_refused")._value.get() == 0
        assert metrics.token_refreshes.labels("config_fault")._value.get() == 2
        assert metrics.hubspot_config_faults.labels("client_credentials")._value.get() == 2
        assert _gauge(metrics, "client_credentials") == 1.0
        shared = await read_shared(redis)
        assert shared is not None
        assert (shared.kind, shared.status, shared.error) == (
            "client_credentials",
            400,
            "BAD_CLIENT_SECRET",
        )
        assert managers[1].config_fault() is not None

        sim.set_faults(reject_client_secret_until=0.0)  # the secret is fixed in HubSpot
        await asyncio.sleep(3.1)  # past the probe interval: the next call asks again
        fresh = await managers[0].access_token(66)
        assert fresh != grant["access_token"]
        assert await read_shared(redis) is None
        assert _gauge(metrics, "client_credentials") == 0.0
        assert await managers[1].access_token(66) == fresh  # stored by the other pod
        await managers[1].recheck()  # the dispatcher's loop asks again, traffic or not
        assert managers[1].config_fault() is None
        assert sim.portal(66).refresh_failures == 0  # the refresh token was never spent


async def test_recheck_asks_only_while_a_fault_is_on(
    start_simulator: StartSimulator, store: TokenStore, session: aiohttp.ClientSession, redis: Any
) -> None:
    running = await start_simulator(access_token_ttl_s=1800)
    grant = running.sim.issue_tokens(67)
    await store.save(67, TokenGrant(grant["access_token"], grant["refresh_token"], 1800))
    manager = TokenManager(
        store,
        HubSpotClient(session, running.url, "sim-client-id", "sim-client-secret"),
        redis,
        config_probe_s=0.0,
    )
    await manager.recheck()
    assert running.sim.portal(67).refreshes == 0  # nothing wrong: nothing asked
    running.sim.set_faults(reject_client_secret_seconds=3600)
    with contextlib.suppress(ConfigFaultActive):
        await manager.access_token(67, rejected=grant["access_token"])
    assert manager.config_fault() is not None
    await manager.recheck()
    assert running.sim.portal(67).client_refusals == 2
    running.sim.set_faults(reject_client_secret_until=0.0)
    await manager.recheck()
    assert manager.config_fault() is None
    assert running.sim.portal(67).refreshes == 1
    installation = await store.installation(67)
    assert installation is not None
    assert installation.status == "installed"


async def test_a_refresh_saves_only_over_the_generation_it_refreshed(store: TokenStore) -> None:
    """Two refreshes of the same stored tokens (a lock lost mid-refresh): the first save wins,
    the late one cannot overwrite it with the tokens it got."""
    await store.save(31, GRANT)
    read = await store.load(31)
    assert read is not None
    first = TokenGrant("access-first", "refresh-first", 1800)
    late = TokenGrant("access-late", "refresh-late", 1800)
    saved = await store.save_refreshed(31, first, time.time(), read.generation)
    assert saved is not None
    assert saved.generation == read.generation + 1
    assert await store.save_refreshed(31, late, time.time(), read.generation) is None
    kept = await store.load(31)
    assert kept is not None
    assert (kept.refresh_token, kept.generation) == ("refresh-first", saved.generation)


async def test_a_refresh_outlasting_the_lock_is_not_raced_by_a_second_refresher(
    start_simulator: StartSimulator,
    store: TokenStore,
    session: aiohttp.ClientSession,
    redis_server: Any,
    redis: Any,
) -> None:
    """HubSpot handles the refresh (rotating the refresh token) but answers after the lock's
    timeout. The holder renews its lock, so the second pod waits and takes the stored tokens
    rather than spending the dead refresh token (which HubSpot refuses: an uninstall)."""
    running = await start_simulator(access_token_ttl_s=1800)
    sim = running.sim
    grant = sim.issue_tokens(21)
    await store.save(21, TokenGrant(grant["access_token"], grant["refresh_token"], 1800))
    sim.set_faults(token_answer_delay_ms=2500)
    metrics = Metrics()
    async with _pods(2, store, running.url, session, redis_server, metrics, lock_timeout_s=1.0) as (
        first,
        second,
    ):
        refreshing = asyncio.create_task(first.access_token(21, rejected=grant["access_token"]))
        await asyncio.sleep(1.5)  # past the lock's timeout, HubSpot's answer still on its way
        second_token = await second.access_token(21, rejected=grant["access_token"])
        first_token = await refreshing
        assert first_token == second_token != grant["access_token"]
        assert sim.portal(21).refreshes == 1
        assert sim.portal(21).refresh_failures == 0  # the spent token was never presented
        installation = await store.installation(21)
        assert installation is not None
        assert installation.status == "installed"
        stored = await store.load(21)
        assert stored is not None
        assert sim.refresh_tokens[stored.refresh_token].revoked is False  # the live one is kept
        assert sample(metrics, "throttle_token_refreshes_total", result="ok") == 1


async def test_a_refresh_token_spent_by_a_refresher_that_lost_its_lock_uninstalls_nobody(
    start_simulator: StartSimulator,
    store: TokenStore,
    session: aiohttp.ClientSession,
    redis_server: Any,
    redis: Any,
) -> None:
    """The first pod's lock is lost anyway (its process stalled past the renewal: here the lock
    key is deleted). The second refreshes with the refresh token the first one's call already
    spent and is refused; by then the first has stored newer tokens, so that refusal is no
    uninstall and both end with the newest tokens."""
    running = await start_simulator(access_token_ttl_s=1800)
    sim = running.sim
    grant = sim.issue_tokens(22)
    await store.save(22, TokenGrant(grant["access_token"], grant["refresh_token"], 1800))
    sim.set_faults(token_answer_delay_ms=1500)
    metrics = Metrics()
    async with _pods(
        2, store, running.url, session, redis_server, metrics, refresh_margin_s=300
    ) as managers:
        refreshing = asyncio.create_task(
            managers[0].access_token(22, rejected=grant["access_token"])
        )
        await asyncio.sleep(0.3)
        assert await redis.delete(keys.hubspot_token_lock(22)) == 1
        second_token = await managers[1].access_token(22, rejected=grant["access_token"])
        first_token = await refreshing
        assert first_token == second_token != grant["access_token"]
        assert sim.portal(22).refreshes == 1
        assert sim.portal(22).refresh_failures == 1  # the second pod's, answered after the save
        installation = await store.installation(22)
        assert installation is not None
        assert (installation.status, installation.tokens_disabled_at) == ("installed", None)
        assert sample(metrics, "throttle_portals_uninstalled_total", cause="refresh_refused") == 0
        stored = await store.load(22)
        assert stored is not None
        assert sim.refresh_tokens[stored.refresh_token].revoked is False


def _gauge(metrics: Metrics, kind: str) -> float | None:
    value = metrics.registry.get_sample_value("throttle_hubspot_config_fault", {"kind": kind})
    return value
