"""The HubSpot client against the simulator: every answer maps to the right typed result."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import parse_qs, urlsplit

import aiohttp
import pytest

from tests.fixtures.hubspot_simulator import RunningSimulator, StartSimulator
from throttle.hubspot.client import (
    CallbackCompletion,
    DeveloperAuth,
    HubSpotClient,
    HubSpotError,
    RateLimited,
    Rejected,
    Retryable,
    Success,
    TokenGrant,
    TokenInfo,
    TokenRefused,
    Unauthorized,
)

DONE = {"hs_execution_state": "SUCCESS", "throttle_status": "released"}


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s


def client_for(running: RunningSimulator, session: aiohttp.ClientSession) -> HubSpotClient:
    config = running.sim.config
    return HubSpotClient(session, running.url, config.client_id, config.client_secret)


def entries(*ids: str) -> list[CallbackCompletion]:
    return [CallbackCompletion(i, DONE) for i in ids]


async def test_oauth_code_exchange_refresh_and_introspection(
    start_simulator: StartSimulator, session: aiohttp.ClientSession
) -> None:
    running = await start_simulator(access_token_ttl_s=1800)
    client = client_for(running, session)
    async with session.get(
        running.url + "/oauth/authorize",
        params={
            "client_id": running.sim.config.client_id,
            "redirect_uri": "http://127.0.0.1:9/cb",
            "scope": "automation oauth",
            "state": "xyz",
            "portal_id": "555",
        },
        allow_redirects=False,
    ) as response:
        assert response.status == 302
        location = urlsplit(response.headers["Location"])
    query = parse_qs(location.query)
    assert query["state"] == ["xyz"]
    code = query["code"][0]

    assert isinstance(await client.exchange_code(code, "http://127.0.0.1:9/other"), TokenRefused)
    grant = await client.exchange_code(code, "http://127.0.0.1:9/cb")
    assert isinstance(grant, TokenGrant)
    assert grant.expires_in == 1800
    assert grant.hub_id is None
    assert grant.access_token not in repr(grant)
    replay = await client.exchange_code(code, "http://127.0.0.1:9/cb")
    assert isinstance(replay, TokenRefused)
    assert replay.error == "BAD_AUTH_CODE"

    info = await client.introspect(grant.access_token)
    assert isinstance(info, TokenInfo)
    assert info.hub_id == 555
    assert "automation" in info.scopes

    refreshed = await client.refresh_token(grant.refresh_token)
    assert isinstance(refreshed, TokenGrant)
    assert refreshed.refresh_token != grant.refresh_token  # harsh: refresh tokens rotate
    stale = await client.refresh_token(grant.refresh_token)
    assert stale == TokenRefused(400, "BAD_REFRESH_TOKEN", "missing or unknown refresh token")

    running.sim.revoke(555)
    revoked = await client.refresh_token(refreshed.refresh_token)
    assert isinstance(revoked, TokenRefused)
    assert revoked.error == "BAD_REFRESH_TOKEN"


async def test_authorize_refuses_missing_scopes_and_reports_denial(
    hubspot_sim: RunningSimulator, session: aiohttp.ClientSession
) -> None:
    base = {"client_id": hubspot_sim.sim.config.client_id, "redirect_uri": "http://x/cb"}
    async with session.get(
        hubspot_sim.url + "/oauth/authorize", params={**base, "scope": "oauth"}
    ) as response:
        assert response.status == 400
    async with session.get(
        hubspot_sim.url + "/oauth/authorize",
        params={**base, "scope": "automation oauth", "deny": "1", "state": "s"},
        allow_redirects=False,
    ) as response:
        query = parse_qs(urlsplit(response.headers["Location"]).query)
        assert query["error"] == ["access_denied"]
        assert query["state"] == ["s"]


async def test_expired_access_token_is_unauthorized(
    start_simulator: StartSimulator, session: aiohttp.ClientSession
) -> None:
    now = [1000.0]
    running = await start_simulator(access_token_ttl_s=60, clock=lambda: now[0])
    client = client_for(running, session)
    token = running.sim.issue_tokens(1)["access_token"]
    running.sim.add_blocked("cb-1", 1)
    now[0] += 61
    result = await client.complete_batch(token, entries("cb-1"))
    assert result == Unauthorized("EXPIRED_AUTHENTICATION", 401)
    assert isinstance(await client.introspect(token), Unauthorized)


async def test_batch_completion_is_all_or_nothing(
    hubspot_sim: RunningSimulator, session: aiohttp.ClientSession
) -> None:
    sim = hubspot_sim.sim
    client = client_for(hubspot_sim, session)
    token = sim.issue_tokens(1)["access_token"]
    other_token = sim.issue_tokens(2)["access_token"]
    for i in range(3):
        sim.add_blocked(f"cb-{i}", 1)
    sim.add_blocked("expired", 1)
    sim.expire(["expired"])

    assert isinstance(await client.complete_batch(token, entries("cb-0", "nope")), Rejected)
    assert not sim.completions  # nothing applied from a rejected batch
    assert isinstance(await client.complete_batch(token, entries("cb-0", "expired")), Rejected)
    # The token must belong to the callback's portal.
    assert isinstance(await client.complete_batch(other_token, entries("cb-0")), Rejected)
    assert isinstance(await client.complete_batch(token, entries("cb-0", "cb-1")), Success)
    again = await client.complete_batch(token, entries("cb-1", "cb-2"))
    assert isinstance(again, Rejected)
    assert again.status == 400
    assert [c.callback_id for c in sim.completions] == ["cb-0", "cb-1"]
    one = await client.complete_one(token, CallbackCompletion("cb-2", DONE))
    assert isinstance(one, Success)
    missing = await client.complete_one(token, CallbackCompletion("nope", DONE))
    assert isinstance(missing, Rejected)
    assert missing.status == 404
    duplicate = await client.complete_one(token, CallbackCompletion("cb-2", DONE))
    assert isinstance(duplicate, Rejected)
    assert duplicate.status == 400
    report = sim.portal(1)
    assert report.duplicates == 2
    assert report.unknown == 2
    assert report.late == 1
    with pytest.raises(ValueError):
        await client.complete_batch(token, entries(*[f"x{i}" for i in range(101)]))


async def test_rate_limit_429_body_and_headers(
    start_simulator: StartSimulator, session: aiohttp.ClientSession
) -> None:
    running = await start_simulator(rate_limit=5, rate_window_s=10.0)
    sim = running.sim
    token = sim.issue_tokens(1)["access_token"]
    url = running.url + "/automation/v4/actions/callbacks/complete"
    headers = {"Authorization": f"Bearer {token}"}
    statuses = []
    for i in range(6):
        sim.add_blocked(f"cb-{i}", 1)
        body = {"inputs": [{"callbackId": f"cb-{i}", "outputFields": DONE}]}
        async with session.post(url, json=body, headers=headers) as response:
            statuses.append(response.status)
            last: Any = (dict(response.headers), await response.read())
    assert statuses == [204] * 5 + [429]
    response_headers, body_bytes = last
    assert response_headers["X-HubSpot-RateLimit-Max"] == "5"
    assert response_headers["X-HubSpot-RateLimit-Remaining"] == "0"
    assert response_headers["X-HubSpot-RateLimit-Interval-Milliseconds"] == "10000"
    import json

    body = json.loads(body_bytes)
    assert body["errorType"] == "RATE_LIMIT"
    assert body["policyName"] == "TEN_SECONDLY_ROLLING"
    result = await client_for(running, session).complete_batch(token, entries("cb-5"))
    assert result == RateLimited(10.0, "TEN_SECONDLY_ROLLING")


async def test_injected_5xx_is_retryable_and_latency_timeout_too(
    hubspot_sim: RunningSimulator, session: aiohttp.ClientSession
) -> None:
    sim = hubspot_sim.sim
    token = sim.issue_tokens(1)["access_token"]
    sim.add_blocked("cb", 1)
    sim.set_faults(error_ratio=1.0)
    result = await client_for(hubspot_sim, session).complete_batch(token, entries("cb"))
    assert result == Retryable("HTTP 503", 503)
    sim.set_faults(error_ratio=0.0, latency_ms=300)
    slow = HubSpotClient(session, hubspot_sim.url, timeout_s=0.1)
    assert await slow.complete_batch(token, entries("cb")) == Retryable("timeout")


async def test_action_definition_crud(
    hubspot_sim: RunningSimulator, session: aiohttp.ClientSession
) -> None:
    import json
    from importlib.resources import files

    definition = json.loads(
        files("throttle.hubspot").joinpath("action_definition.json").read_text()
    )
    definition["actionUrl"] = "https://throttle.example.com/api/hubspot/action"
    client = client_for(hubspot_sim, session)
    app_id = hubspot_sim.sim.config.app_id
    auth = DeveloperAuth(api_key=hubspot_sim.sim.config.developer_api_key)
    with pytest.raises(HubSpotError, match="401"):
        await client.list_definitions(app_id, DeveloperAuth(api_key="wrong"))
    created = await client.create_definition(app_id, definition, auth)
    assert created["id"]
    assert created["revisionId"] == "1"
    listed = await client.list_definitions(app_id, auth)
    assert [d["id"] for d in listed] == [created["id"]]
    updated = await client.update_definition(app_id, created["id"], {"published": True}, auth)
    assert updated["published"] is True
    assert updated["revisionId"] == "2"
    with pytest.raises(HubSpotError, match="400"):
        await client.create_definition(app_id, {**definition, "actionUrl": "http://x.com"}, auth)
    await client.archive_definition(app_id, created["id"], auth)
    assert await client.list_definitions(app_id, auth) == []


async def test_lost_answer_then_retry_reads_as_already_completed(
    hubspot_sim: RunningSimulator, session: aiohttp.ClientSession
) -> None:
    """Harsh: HubSpot applied the completion but the answer was a 5xx; the retry is refused."""
    sim = hubspot_sim.sim
    token = sim.issue_tokens(1)["access_token"]
    sim.add_blocked("cb", 1)
    sim.set_faults(error_after_apply_ratio=1.0)
    client = client_for(hubspot_sim, session)
    assert isinstance(await client.complete_batch(token, entries("cb")), Retryable)
    sim.set_faults(error_after_apply_ratio=0.0)
    again = await client.complete_batch(token, entries("cb"))
    assert isinstance(again, Rejected)
    assert [c.callback_id for c in sim.completions] == ["cb"]
    assert sim.portal(1).duplicates == 1


async def test_already_completed_is_recognised_named_or_not(
    start_simulator: StartSimulator, session: aiohttp.ClientSession
) -> None:
    """HubSpot refuses a re-sent completion; the client counts the errors that say "already
    completed" apart from any other, on the batch and the single endpoint, named or not."""
    for naming in (False, True):
        running = await start_simulator(name_offenders_in_errors=naming)
        sim = running.sim
        client = client_for(running, session)
        token = sim.issue_tokens(1)["access_token"]
        for i in range(4):
            sim.add_blocked(f"cb-{i}", 1)
        sim.add_blocked("expired", 1)
        sim.expire(["expired"])
        assert isinstance(await client.complete_batch(token, entries("cb-0", "cb-1")), Success)

        again = await client.complete_batch(token, entries("cb-0", "cb-2", "cb-1"))
        assert isinstance(again, Rejected)
        assert (again.already_completed, again.other_errors) == (2, 0)
        assert again.only_already_completed
        assert again.already_completed_ids == (("cb-0", "cb-1") if naming else ())

        mixed = await client.complete_batch(token, entries("cb-0", "expired", "cb-3"))
        assert isinstance(mixed, Rejected)
        assert (mixed.already_completed, mixed.other_errors) == (1, 1)
        assert not mixed.only_already_completed

        one = await client.complete_one(token, CallbackCompletion("cb-1", DONE))
        assert isinstance(one, Rejected)
        assert one.only_already_completed
        late = await client.complete_one(token, CallbackCompletion("expired", DONE))
        assert isinstance(late, Rejected)
        assert late.already_completed == 0
        assert not sim.portal(1).unauthorized
