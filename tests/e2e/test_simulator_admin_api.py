"""The simulator's admin API (/_sim), as the demo, benchmarks and other suites drive it."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from tests.fixtures.hubspot_simulator import RunningSimulator
from throttle_dev.simulator.driver import Driver


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


async def _json(http: aiohttp.ClientSession, method: str, url: str, **kw: Any) -> Any:
    async with http.request(method, url, **kw) as response:
        return response.status, await response.json()


async def test_seed_complete_report_reset(
    hubspot_sim: RunningSimulator, http: aiohttp.ClientSession
) -> None:
    base = hubspot_sim.url
    status, grant = await _json(http, "POST", base + "/_sim/portals", json={"portalId": 11})
    assert status == 201
    assert grant["hub_id"] == 11
    status, body = await _json(
        http,
        "POST",
        base + "/_sim/callbacks",
        json={"callbacks": [{"callbackId": f"c{i}", "portalId": 11} for i in range(3)]},
    )
    assert (status, body) == (201, {"registered": 3})
    inputs = [
        {"callbackId": f"c{i}", "outputFields": {"hs_execution_state": "SUCCESS"}} for i in (0, 1)
    ]
    async with http.post(
        base + "/automation/v4/actions/callbacks/complete",
        json={"inputs": inputs},
        headers={"Authorization": f"Bearer {grant['access_token']}"},
    ) as response:
        assert response.status == 204
        assert response.headers["X-HubSpot-RateLimit-Max"] == "110"
    await _json(http, "POST", base + "/_sim/expire", json={"callbackIds": ["c2"]})
    status, report = await _json(http, "GET", base + "/_sim/report")
    assert report["total"]["completed"] == 2
    assert report["total"]["expired"] == 1
    assert report["portals"][0]["completion_requests"] == 1
    async with http.get(base + "/_sim/report?format=text") as response:
        assert "total" in await response.text()
    status, rows = await _json(http, "GET", base + "/_sim/completions?portalId=11")
    assert [r["callbackId"] for r in rows["completions"]] == ["c0", "c1"]
    assert [r["request"] for r in rows["completions"]] == [1, 1]  # one request applied both
    assert [r["outputFields"] for r in rows["completions"]] == [
        {"hs_execution_state": "SUCCESS"}
    ] * 2
    await _json(http, "POST", base + "/_sim/reset")
    status, report = await _json(http, "GET", base + "/_sim/report")
    assert report["portals"] == []


async def test_faults_and_revocation(
    hubspot_sim: RunningSimulator, http: aiohttp.ClientSession
) -> None:
    base = hubspot_sim.url
    status, body = await _json(http, "POST", base + "/_sim/faults", json={"nope": 1})
    assert status == 400
    for bad in (
        {"error_ratio": 2},
        {"error_ratio": "x"},
        {"error_status": 404},
        {"reject_client_secret_seconds": -1},
        {"reject_client_secret_until": "soon"},
    ):
        status, body = await _json(
            http, "POST", base + "/_sim/faults", json={**bad, "latency_ms": 9}
        )
        assert status == 400
    assert hubspot_sim.sim.faults.latency_ms == 0  # a refused change changes nothing
    status, faults = await _json(
        http, "POST", base + "/_sim/faults", json={"storm_seconds": 30, "latency_ms": 1}
    )
    assert status == 200
    assert faults["storm_until"] > 0
    _, grant = await _json(http, "POST", base + "/_sim/portals", json={"portalId": 12})
    hubspot_sim.sim.add_blocked("s1", 12)
    async with http.post(
        base + "/automation/v4/actions/callbacks/s1/complete",
        json={"outputFields": {}},
        headers={"Authorization": f"Bearer {grant['access_token']}"},
    ) as response:
        assert response.status == 429
        assert (await response.json())["policyName"] == "TEN_SECONDLY_ROLLING"
    status, body = await _json(http, "POST", base + "/_sim/revoke", json={"portalId": 12})
    assert body == {"revoked": 1}
    form = {
        "grant_type": "refresh_token",
        "client_id": hubspot_sim.sim.config.client_id,
        "client_secret": hubspot_sim.sim.config.client_secret,
        "refresh_token": grant["refresh_token"],
    }
    status, body = await _json(http, "POST", base + "/oauth/v1/token", data=form)
    assert (status, body["status"]) == (400, "BAD_REFRESH_TOKEN")
    # The app's client secret refused for a while: the status a dead refresh token gets, the
    # body says it is the app's; the refresh token is not spent, and works once it is over.
    status, faults = await _json(
        http, "POST", base + "/_sim/faults", json={"reject_client_secret_seconds": 60}
    )
    assert faults["reject_client_secret_until"] > 0
    _, other = await _json(http, "POST", base + "/_sim/portals", json={"portalId": 13})
    form = {**form, "refresh_token": other["refresh_token"]}
    status, body = await _json(http, "POST", base + "/oauth/v1/token", data=form)
    assert (status, body["status"]) == (400, "BAD_CLIENT_SECRET")
    assert hubspot_sim.sim.portal(13).client_refusals == 1
    await _json(http, "POST", base + "/_sim/faults", json={"reject_client_secret_until": 0})
    status, body = await _json(http, "POST", base + "/oauth/v1/token", data=form)
    assert status == 200
    assert body["access_token"]
    status, body = await _json(http, "POST", base + "/_sim/revoke", json={})
    assert status == 400
    for path, bad in (
        ("/_sim/callbacks", {"callbacks": [{"portalId": 1}]}),
        ("/_sim/expire", ["x"]),
        ("/_sim/uninstall", {"portalId": 1}),
        ("/_sim/portals", []),
    ):
        status, body = await _json(http, "POST", base + path, json=bad)
        assert status == 400, path
        assert body["category"] == "VALIDATION_ERROR"


async def test_drive_over_http(
    hubspot_sim: RunningSimulator, http: aiohttp.ClientSession, aiohttp_server: Any
) -> None:
    async def action(request: web.Request) -> web.Response:
        return web.json_response(
            {"outputFields": {"hs_execution_state": "BLOCK", "hs_expiration_duration": "P1D"}}
        )

    app = web.Application()
    app.router.add_post("/a", action)
    server = await aiohttp_server(app)
    status, result = await _json(
        http,
        "POST",
        hubspot_sim.url + "/_sim/drive",
        json={"actionUrl": str(server.make_url("/a")), "executions": 12, "portals": [1, 2, 3]},
    )
    assert status == 200
    assert result["answers"] == {"BLOCK": 12}
    assert result["latency_ms"]["p50"] > 0
    status, report = await _json(http, "GET", hubspot_sim.url + "/_sim/report")
    assert [p["never_completed"] for p in report["portals"]] == [4, 4, 4]
    status, _body = await _json(
        http, "POST", hubspot_sim.url + "/_sim/drive", json={"actionUrl": "x", "bogus": 1}
    )
    assert status == 400


async def test_late_answers_apply_first_and_resends_count_as_sent_twice(
    hubspot_sim: RunningSimulator, http: aiohttp.ClientSession
) -> None:
    """HubSpot answering a completion late has already applied it: a client that gives up and
    sends it again has sent a completion twice, whatever HubSpot answers the second time."""
    import asyncio
    import time

    base = hubspot_sim.url
    _, grant = await _json(http, "POST", base + "/_sim/portals", json={"portalId": 13})
    auth = {"Authorization": f"Bearer {grant['access_token']}"}
    for i in range(3):
        hubspot_sim.sim.add_blocked(f"late{i}", 13)
    status, faults = await _json(
        http, "POST", base + "/_sim/faults", json={"completion_answer_delay_ms": 400}
    )
    assert (status, faults["completion_answer_delay_ms"]) == (200, 400)
    status, _ = await _json(
        http, "POST", base + "/_sim/faults", json={"completion_answer_delay_ms": -1}
    )
    assert status == 400
    inputs = [{"callbackId": f"late{i}", "outputFields": {}} for i in (0, 1)]
    started = time.monotonic()
    request = asyncio.ensure_future(
        http.post(
            base + "/automation/v4/actions/callbacks/complete",
            json={"inputs": inputs},
            headers=auth,
        )
    )
    await asyncio.sleep(0.2)
    assert hubspot_sim.sim.callbacks["late0"].completed_at is not None  # applied at once
    assert not request.done()
    async with await request as response:
        assert response.status == 204
    assert time.monotonic() - started >= 0.4  # answered late
    hubspot_sim.sim.set_faults(completion_answer_delay_ms=0)
    # sent again with one never completed: refused as a whole, two callbacks sent twice
    again = [*inputs, {"callbackId": "late2", "outputFields": {}}]
    async with http.post(
        base + "/automation/v4/actions/callbacks/complete", json={"inputs": again}, headers=auth
    ) as response:
        assert response.status == 400
        body = await response.json()
        assert [e["subCategory"] for e in body["errors"]] == ["DUPLICATE", "DUPLICATE"]
    # a resend HubSpot refuses before reading it (an expired token) is sent twice all the same
    async with http.post(
        base + "/automation/v4/actions/callbacks/late0/complete",
        json={"outputFields": {}},
        headers={"Authorization": "Bearer nope"},
    ) as response:
        assert response.status == 401
    _, report = await _json(http, "GET", base + "/_sim/report")
    row = report["portals"][0]
    assert (row["completed"], row["duplicates"], row["sent_twice"]) == (2, 2, 3)
    async with http.get(base + "/_sim/report?format=text") as response:
        assert "sent2x" in await response.text()


async def test_a_client_secret_rotated_at_hubspot_signs_requests_and_guards_the_token_endpoint(
    hubspot_sim: RunningSimulator, http: aiohttp.ClientSession
) -> None:
    """The chaos row "client secret rotated at HubSpot first" depends on this: from the rotation
    on, HubSpot signs with the new secret and its token endpoint refuses the old one."""
    base, sim = hubspot_sim.url, hubspot_sim.sim
    old = sim.config.client_secret
    for bad in ({"client_secret": ""}, {"client_secret": 7}, {"client_secret": "s", "nope": 1}):
        status, _ = await _json(http, "POST", base + "/_sim/faults", json=bad)
        assert status == 400
        assert sim.config.client_secret == old, "a refused change changes nothing"
    status, _ = await _json(http, "POST", base + "/_sim/faults", json={"client_secret": "new-s"})
    assert status == 200
    assert sim.config.client_secret == "new-s"
    assert Driver(sim, base + "/action").client_secret == "new-s", "actions signed with it"
    form = {"grant_type": "refresh_token", "client_id": sim.config.client_id}
    async with http.post(
        base + "/oauth/v1/token", data={**form, "client_secret": old, "refresh_token": "x"}
    ) as response:
        assert response.status == 400
        assert "BAD_CLIENT_SECRET" in await response.text()


async def test_drive_signs_for_the_sign_url_while_it_sends_to_the_action_url(
    hubspot_sim: RunningSimulator, http: aiohttp.ClientSession, aiohttp_server: Any
) -> None:
    """Inside a cluster the driver sends to the webhook's Service while HubSpot's signature covers
    the webhook's public URL (PUBLIC_URL): `signUrl` names it."""
    from throttle.hubspot.signatures import sign_v3

    seen: list[tuple[bytes, str, str]] = []

    async def action(request: web.Request) -> web.Response:
        headers = request.headers
        seen.append(
            (
                await request.read(),
                headers["X-HubSpot-Signature-v3"],
                headers["X-HubSpot-Request-Timestamp"],
            )
        )
        return web.json_response(
            {"outputFields": {"hs_execution_state": "BLOCK", "hs_expiration_duration": "P1D"}}
        )

    app = web.Application()
    app.router.add_post("/api/hubspot/action", action)
    server = await aiohttp_server(app)
    public = "http://localhost:8080/api/hubspot/action"
    status, result = await _json(
        http,
        "POST",
        hubspot_sim.url + "/_sim/drive",
        json={
            "actionUrl": str(server.make_url("/api/hubspot/action")),
            "signUrl": public,
            "executions": 1,
        },
    )
    assert status == 200, result
    assert result["answers"] == {"BLOCK": 1}
    [(body, signature, timestamp)] = seen
    secret = hubspot_sim.sim.config.client_secret
    assert signature == sign_v3(secret, "POST", public, body, int(timestamp))
    assert signature != sign_v3(
        secret, "POST", str(server.make_url("/api/hubspot/action")), body, int(timestamp)
    )
