"""Token store and manager against real PostgreSQL, real Redis and the simulator."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import pytest

from tests.fixtures.hubspot_simulator import StartSimulator
from tests.fixtures.hubspot_tokens import new_key
from tests.fixtures.metric_samples import sample
from throttle.hubspot.client import HubSpotClient, TokenGrant
from throttle.hubspot.crypto import CryptoError, TokenCipher, UnknownKeyError
from throttle.hubspot.tokens import NotInstalled, PortalStopped, TokenManager, TokenStore
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


async def test_uninstall_keeps_the_reason_and_drops_tokens(store: TokenStore) -> None:
    await store.save(5, GRANT)
    assert await store.mark_uninstalled(5, "uninstalled: test") is True
    assert await store.mark_uninstalled(5, "again") is False
    installation = await store.installation(5)
    assert installation is not None
    assert installation.status == "uninstalled"
    assert installation.uninstall_reason == "uninstalled: test"
    assert await store.load(5) is None
    await store.save(5, GRANT)  # reinstall
    again = await store.installation(5)
    assert again is not None
    assert (again.status, again.uninstall_reason) == ("installed", None)


async def _managers(
    n: int,
    store: TokenStore,
    url: str,
    session: aiohttp.ClientSession,
    redis_server: Any,
    metrics: Metrics,
    margin: float,
) -> tuple[list[TokenManager], list[Any]]:
    redis_clients = [redis_server.client() for _ in range(n)]
    managers = [
        TokenManager(
            store,
            HubSpotClient(session, url, "sim-client-id", "sim-client-secret"),
            client,
            metrics,
            refresh_margin_s=margin,
        )
        for client in redis_clients
    ]
    return managers, redis_clients


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
    managers, clients = await _managers(3, store, running.url, session, redis_server, metrics, 300)
    try:
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
    finally:
        for client in clients:
            await client.aclose()


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
    managers, clients = await _managers(2, store, running.url, session, redis_server, metrics, 300)
    try:
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
        assert running.sim.portal(88).refresh_failures == 1  # only one pod asked
        assert sample(metrics, "throttle_portals_uninstalled_total", cause="refresh_refused") == 1
        with pytest.raises(PortalStopped):
            await managers[0].access_token(88)
        with pytest.raises(NotInstalled):
            await managers[0].access_token(99)
    finally:
        for client in clients:
            await client.aclose()


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
