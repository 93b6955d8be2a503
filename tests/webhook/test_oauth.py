"""The install flow, the uninstall webhook, and no token in any log line, against the simulator."""

from __future__ import annotations

import asyncio
import io
import logging
import time
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import parse_qs, urlsplit

import aiohttp
import pytest
from aiohttp import web

from tests.fixtures.hubspot_simulator import RunningSimulator, StartSimulator
from tests.fixtures.metric_samples import sample
from tests.fixtures.webhook import serve_on
from throttle.dispatcher.hubspot_completer import HubSpotCompleter
from throttle.engine.queue import Released
from throttle.hubspot.budget import PortalBudget
from throttle.hubspot.client import HubSpotClient
from throttle.hubspot.config_fault import read_shared
from throttle.hubspot.crypto import TokenCipher
from throttle.hubspot.oauth_state import OAuthStateSigner
from throttle.hubspot.tokens import TokenManager, TokenStore
from throttle.logs import RedactingFilter
from throttle.metrics import Metrics
from throttle.settings import Settings
from throttle.webhook_service.appkeys import HUBSPOT, METRICS, REDIS, SETTINGS, TOKENS, VERIFIER
from throttle.webhook_service.errors import json_errors
from throttle.webhook_service.oauth import routes
from throttle.webhook_service.verification import SignatureVerifier
from throttle_dev.simulator import send_uninstall


class Stack:
    def __init__(self, running: RunningSimulator, settings: Settings, app: web.Application):
        self.running = running
        self.sim = running.sim
        self.settings = settings
        self.app = app
        self.url = settings.public_url or ""

    @property
    def tokens(self) -> TokenManager:
        manager: TokenManager = self.app[TOKENS]
        return manager


@pytest.fixture
async def stack(
    start_simulator: StartSimulator,
    make_settings: Any,
    redis: Any,
    pool: Any,
    session: aiohttp.ClientSession,
) -> AsyncIterator[Stack]:
    settings = make_settings()
    running = await start_simulator(
        client_id=settings.hubspot_client_id,
        client_secret=settings.hubspot_client_secret.get_secret_value(),
        access_token_ttl_s=4,
    )
    settings = make_settings(hubspot_api_base=running.url, hubspot_app_base=running.url)
    app = web.Application()
    metrics = Metrics()
    client = HubSpotClient.from_settings(session, settings, metrics)
    app[SETTINGS] = settings
    app[METRICS] = metrics
    app[VERIFIER] = SignatureVerifier(settings)
    app[REDIS] = redis
    app[HUBSPOT] = client
    app[TOKENS] = TokenManager(
        TokenStore(pool, TokenCipher(settings.encryption_keys)), client, redis, metrics
    )
    app.add_routes(json_errors(routes()))
    server = await serve_on(app, settings.port)
    yield Stack(running, settings, app)
    await server.close()


async def install(stack: Stack, session: aiohttp.ClientSession, portal_id: int) -> str:
    """Browser-like: our authorize → HubSpot's (simulated) authorize → our callback."""
    async with session.get(stack.url + "/api/oauth/authorize", allow_redirects=False) as r:
        assert r.status == 302
        hubspot_url = r.headers["Location"]
    parts = urlsplit(hubspot_url)
    query = parse_qs(parts.query)
    assert hubspot_url.startswith(stack.running.url + "/oauth/authorize?")
    assert query["scope"] == ["automation oauth"]
    assert query["redirect_uri"] == [stack.url + "/api/oauth/callback"]
    assert query["client_id"] == [stack.settings.hubspot_client_id]
    async with session.get(hubspot_url + f"&portal_id={portal_id}", allow_redirects=False) as r:
        callback_url = r.headers["Location"]
    return callback_url


async def test_install_stores_tokens_and_refuses_replay(
    stack: Stack, session: aiohttp.ClientSession, pool: Any
) -> None:
    callback_url = await install(stack, session, 321)
    async with session.get(callback_url) as r:
        assert r.status == 200
        assert "installed for portal 321" in await r.text()
    stored = await stack.tokens.store.load(321)
    assert stored is not None
    assert stored.access_token in stack.sim.access_tokens
    generation = stored.generation
    async with session.get(callback_url, headers={"Accept": "application/json"}) as r:
        assert r.status == 400
        body = await r.json()
        assert "already used" in body["detail"]
    again = await stack.tokens.store.load(321)
    assert again is not None
    assert again.generation == generation
    metrics = stack.app[METRICS]
    assert sample(metrics, "throttle_oauth_installs_total", result="installed") == 1
    assert sample(metrics, "throttle_oauth_installs_total", result="bad_state") == 1


@pytest.mark.parametrize(
    "state",
    [
        None,
        "garbage",
        "nonce.9999999999.c2lnbmF0dXJl",
        OAuthStateSigner("another-secret-key-base-of-32-chars-or-more").issue().state,
        "expired",
    ],
)
async def test_wrong_or_expired_state_stores_nothing(
    stack: Stack, session: aiohttp.ClientSession, pool: Any, state: str | None
) -> None:
    callback_url = await install(stack, session, 654)
    parts = urlsplit(callback_url)
    query = {k: v[0] for k, v in parse_qs(parts.query).items()}
    if state == "expired":
        signer = OAuthStateSigner(stack.settings.secret_key_base.get_secret_value())
        state = signer.issue(now=time.time() - 3600).state
    if state is None:
        query.pop("state")
    else:
        query["state"] = state
    async with session.get(stack.url + "/api/oauth/callback", params=query) as r:
        assert r.status == 400
        assert "<h1>Install refused</h1>" in await r.text()
    assert await pool.fetchval("SELECT count(*) FROM oauth_tokens") == 0
    assert await pool.fetchval("SELECT count(*) FROM hubspot_portals") == 0
    assert stack.sim.codes  # the code was never exchanged
    assert not any(code.used for code in stack.sim.codes.values())


async def test_denied_install_shows_hubspot_error(
    stack: Stack, session: aiohttp.ClientSession, pool: Any
) -> None:
    async with session.get(stack.url + "/api/oauth/authorize", allow_redirects=False) as r:
        hubspot_url = r.headers["Location"]
    async with session.get(hubspot_url + "&deny=1", allow_redirects=False) as r:
        callback_url = r.headers["Location"]
    async with session.get(callback_url) as r:
        assert r.status == 400
        assert "access" in await r.text()
    assert await pool.fetchval("SELECT count(*) FROM hubspot_portals") == 0


async def test_uninstall_webhook_marks_portal_uninstalled(
    stack: Stack, session: aiohttp.ClientSession
) -> None:
    async with session.get(await install(stack, session, 777)) as r:
        assert r.status == 200
    url = stack.url + "/api/hubspot/uninstall"
    forged = b'[{"subscriptionType":"app.uninstall","portalId":777}]'
    async with session.post(url, data=forged, headers={"X-HubSpot-Signature": "00"}) as r:
        assert r.status == 401
    assert (await stack.tokens.store.installation(777)).status == "installed"  # type: ignore[union-attr]
    assert await send_uninstall(stack.sim, url, 777, session) == 200
    installation = await stack.tokens.store.installation(777)
    assert installation is not None
    assert installation.status == "uninstalled"
    assert installation.uninstall_reason == "uninstalled: app uninstall webhook"
    assert await stack.tokens.store.load(777) is None
    assert installation.tokens_disabled_at is not None  # kept, disabled, for the grace period
    assert (
        sample(stack.app[METRICS], "throttle_portals_uninstalled_total", cause="uninstall_webhook")
        == 1
    )


async def test_a_late_retry_of_an_old_uninstall_does_not_wipe_a_reinstall(
    stack: Stack, session: aiohttp.ClientSession
) -> None:
    """HubSpot retries webhook deliveries for hours: the uninstall of before a reinstall, arriving
    after it, once marked the fresh install uninstalled and disabled its tokens."""
    url = stack.url + "/api/hubspot/uninstall"
    async with session.get(await install(stack, session, 778)) as r:
        assert r.status == 200
    uninstalled_ms = int(time.time() * 1000)
    assert await send_uninstall(stack.sim, url, 778, session, occurred_at_ms=uninstalled_ms) == 200
    assert (await stack.tokens.store.installation(778)).status == "uninstalled"  # type: ignore[union-attr]
    await asyncio.sleep(0.01)
    async with session.get(await install(stack, session, 778)) as r:
        assert r.status == 200
    reinstalled = await stack.tokens.store.load(778)
    assert reinstalled is not None

    assert await send_uninstall(stack.sim, url, 778, session, occurred_at_ms=uninstalled_ms) == 200
    installation = await stack.tokens.store.installation(778)
    assert installation is not None
    assert installation.status == "installed"
    assert installation.tokens_disabled_at is None
    stored = await stack.tokens.store.load(778)
    assert stored is not None
    assert stored.access_token == reinstalled.access_token
    # A new uninstall (after the reinstall) still counts.
    assert await send_uninstall(stack.sim, url, 778, session) == 200
    assert (await stack.tokens.store.installation(778)).status == "uninstalled"  # type: ignore[union-attr]


async def test_install_meeting_a_refused_client_secret_is_recorded_not_blamed_on_the_admin(
    stack: Stack, session: aiohttp.ClientSession, pool: Any, redis: Any
) -> None:
    stack.sim.set_faults(reject_client_secret_seconds=3600)
    async with session.get(await install(stack, session, 432)) as r:
        assert r.status == 502
        text = await r.text()
    assert "<h1>Install failed</h1>" in text
    assert "HUBSPOT_CLIENT_SECRET" not in text  # internals are for the operators' eyes
    assert await pool.fetchval("SELECT count(*) FROM hubspot_portals") == 0
    record = await read_shared(redis)  # what /readyz and `throttle doctor` show
    assert record is not None
    assert (record.kind, record.error) == ("client_credentials", "BAD_CLIENT_SECRET")
    metrics = stack.app[METRICS]
    assert metrics.oauth_installs.labels("exchange_failed")._value.get() == 1
    assert metrics.hubspot_config_faults.labels("client_credentials")._value.get() == 1
    stack.sim.set_faults(reject_client_secret_until=0.0)
    async with session.get(await install(stack, session, 432)) as r:
        assert r.status == 200
    assert await read_shared(redis) is None


async def test_no_token_in_any_log_line(
    stack: Stack, session: aiohttp.ClientSession, redis: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """Install, refresh and complete with every logger at DEBUG: no code or token in any record,
    neither as our code wrote it (without the filter) nor after the project's RedactingFilter."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.addFilter(RedactingFilter(stack.settings.secret_values()))
    handler.setFormatter(logging.Formatter("%(name)s %(levelname)s %(message)s"))
    root = logging.getLogger()
    root.addHandler(handler)
    caplog.set_level(logging.DEBUG)
    try:
        callback_url = await install(stack, session, 901)
        code = parse_qs(urlsplit(callback_url).query)["code"][0]
        async with session.get(callback_url) as r:
            assert r.status == 200
        first = await stack.tokens.store.load(901)
        assert first is not None
        time.sleep(2.2)  # inside the refresh margin of a 4 s token
        for i in range(3):
            stack.sim.add_blocked(f"cb-{i}", 901)
        completer = HubSpotCompleter(
            stack.app[HUBSPOT], stack.tokens, PortalBudget(redis, 100, 10.0)
        )
        items = [Released(f"cb-{i}", 901, "p", "shared", time.time(), 0, 1.0) for i in range(3)]
        result = await completer.complete(901, items)
        assert len(result.completed) == 3
        second = await stack.tokens.store.load(901)
        assert second is not None
        assert second.access_token != first.access_token  # a refresh happened
        logging.getLogger("throttle.test").info(
            "a careless line: Bearer %s refresh_token=%s", second.access_token, "zzz-secret-zzz"
        )
    finally:
        root.removeHandler(handler)
    secrets_seen = {
        code,
        first.access_token,
        first.refresh_token,
        second.access_token,
        second.refresh_token,
        stack.settings.hubspot_client_secret.get_secret_value(),
    }
    ours = [r for r in caplog.records if r.name != "throttle.test"]
    assert any(r.name.startswith("throttle") for r in ours)  # our code did log
    for record in ours:
        text = record.getMessage() + str(record.__dict__)
        for secret in secrets_seen:
            assert secret not in text, f"{record.name} logged a secret"
    written = stream.getvalue()
    assert "portal 901" in written
    for secret in [*secrets_seen, "zzz-secret-zzz"]:
        assert secret not in written


async def test_database_down_during_install_says_so(
    stack: Stack, session: aiohttp.ClientSession, pool: Any
) -> None:
    callback_url = await install(stack, session, 808)
    await pool.close()
    async with session.get(callback_url) as r:
        assert r.status == 503
        assert "start again" in await r.text()
    assert sample(stack.app[METRICS], "throttle_oauth_installs_total", result="store_failed") == 1
