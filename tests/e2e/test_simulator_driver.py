"""The traffic driver and the report: what HubSpot would make of each answer, counted right."""

from __future__ import annotations

import json
from collections import Counter
from typing import Any

import pytest
from aiohttp import web

from throttle_dev.simulator import Driver, Simulator, SimulatorConfig, TrafficPlan, build_report
from throttle_dev.simulator.driver import parse_expiration
from throttle_dev.simulator.portal_report import format_report

BLOCK = {"outputFields": {"hs_execution_state": "BLOCK", "hs_expiration_duration": "PT30S"}}


class ActionEndpoint:
    """A scripted action URL: 503 on a callback's first delivery when asked, else BLOCK."""

    def __init__(self) -> None:
        self.seen: Counter[str] = Counter()
        self.flaky_every = 0
        self.answer: dict[str, Any] | None = BLOCK
        self.status = 200

    async def handle(self, request: web.Request) -> web.StreamResponse:
        payload = json.loads(await request.read())
        callback_id = payload["callbackId"]
        self.seen[callback_id] += 1
        index = int(callback_id.split("-")[3])
        if self.flaky_every and index % self.flaky_every == 0 and self.seen[callback_id] == 1:
            return web.json_response({"error": "busy"}, status=503)
        if self.answer is None:
            return web.Response(status=self.status)
        return web.json_response(self.answer, status=self.status)


@pytest.fixture
async def endpoint(aiohttp_server: Any) -> tuple[ActionEndpoint, str]:
    action = ActionEndpoint()
    app = web.Application()
    app.router.add_post("/api/hubspot/action", action.handle)
    server = await aiohttp_server(app)
    return action, str(server.make_url("/api/hubspot/action"))


def test_parse_expiration() -> None:
    assert parse_expiration("P7D") == 7 * 86400
    assert parse_expiration("PT12H") == 12 * 3600
    assert parse_expiration("P1DT2H3M4S") == 86400 + 7384
    for bad in ("P1W", "PT", "P", "1D", "P1DT", "", None, 5):
        assert parse_expiration(bad) is None


async def test_driver_retries_duplicates_and_report(endpoint: tuple[ActionEndpoint, str]) -> None:
    action, url = endpoint
    action.flaky_every = 5
    now = [1_000_000.0]
    sim = Simulator(SimulatorConfig(seed=3, clock=lambda: now[0]))
    plan = TrafficPlan(
        executions=40, portals=[1, 2], duplicate_ratio=0.25, retry_backoff_s=0.01, burst=10
    )
    async with Driver(sim, url) as driver:
        result = await driver.run(plan)
    assert result.sent == 40
    assert result.answers == {"BLOCK": 40}
    assert result.retries == 8  # every 5th callback got a 503 first, then was resent
    assert result.duplicates_sent == sum(result.duplicate_answers.values())
    assert result.duplicates_sent > 0
    assert result.duplicate_answers == {"BLOCK": result.duplicates_sent}
    assert result.bad_answers == 0
    assert len(sim.callbacks) == 40
    assert max(action.seen.values()) <= 3

    blocked = sorted(sim.callbacks.values(), key=lambda c: c.callback_id)
    portal_one = [c for c in blocked if c.portal_id == 1]
    for callback in portal_one[:5]:
        sim.complete_one(
            1, callback.callback_id, {"outputFields": {"hs_execution_state": "SUCCESS"}}
        )
    with pytest.raises(Exception, match="already completed"):
        sim.complete_one(1, portal_one[0].callback_id, {"outputFields": {}})
    sim.expire([c.callback_id for c in portal_one[5:8]])
    now[0] += 10  # still inside PT30S for the others
    report = build_report(sim)
    one = report.portal(1)
    assert (one.executions, one.blocked, one.completed) == (20, 20, 5)
    assert (one.duplicates, one.expired, one.never_completed) == (1, 3, 12)
    now[0] += 31  # now every open callback has expired
    assert build_report(sim).total.expired == 35
    table = format_report(build_report(sim))
    assert "total" in table
    assert "completed" in table


async def test_driver_flags_answers_that_do_not_block(endpoint: tuple[ActionEndpoint, str]) -> None:
    action, url = endpoint
    sim = Simulator()
    action.answer = None
    action.status = 204
    async with Driver(sim, url) as driver:
        bare = await driver.run(TrafficPlan(executions=2))
    assert bare.answers == {"SUCCESS (no state)": 2}
    assert bare.bad_answers == 2  # a bare 2xx lets the enrollment through unthrottled
    action.answer = {
        "outputFields": {"hs_execution_state": "BLOCK", "hs_expiration_duration": "P1W"}
    }
    action.status = 200
    async with Driver(sim, url) as driver:
        weeks = await driver.run(TrafficPlan(executions=1))
    assert "bad hs_expiration_duration 'P1W'" in weeks.problems[0]
    action.answer = {"error": "bad"}
    action.status = 400
    async with Driver(sim, url) as driver:
        refused = await driver.run(TrafficPlan(executions=1))
    assert refused.answers == {"HTTP 400": 1}
    report = build_report(sim)
    assert report.total.blocked == 1  # only the P1W one blocked (with the default expiry)


def test_plan_from_dict_refuses_unknown_fields() -> None:
    assert TrafficPlan.from_dict({"executions": 5, "portals": [3]}).portals == [3]
    with pytest.raises(ValueError, match="unknown plan fields: nope"):
        TrafficPlan.from_dict({"nope": 1})
    with pytest.raises(ValueError, match="signature_version"):
        TrafficPlan.from_dict({"signature_version": "v1"})
