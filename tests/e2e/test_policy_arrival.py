"""A new policy is in force on every webhook process from the first execution after the config
API answered: created through webhook A, the first execution reaches webhook B (whose periodic
reload is up to 2 s away) within 10 ms, then 1,000 more. Every one is held (BLOCK) and HubSpot
sees them completed at the policy's rate. Real processes: Redis, PostgreSQL, two webhooks, two
dispatchers and the simulator, started through the CLI (`throttle_dev.chaos.harness`)."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from throttle.hubspot.signatures import sign_v3
from throttle_dev.chaos.harness import Harness, Rate
from throttle_dev.demo.measure import max_in_window

RATE = Rate(limit=100, period_s=1, burst=0)
MORE = 1_000
POLICY = "arrival"


def execution(portal: int, callback_id: str) -> bytes:
    """One execution exactly as HubSpot sends it (the simulator driver's shape)."""
    return json.dumps(
        {
            "callbackId": callback_id,
            "origin": {"portalId": portal, "actionDefinitionId": 1, "actionDefinitionVersion": 1},
            "context": {"source": "WORKFLOWS", "workflowId": 192814114},
            "object": {"objectId": 900, "objectType": "CONTACT", "properties": {}},
            "inputFields": {"policy": POLICY},
        },
        ensure_ascii=True,
    ).encode()


async def scenario(h: Harness) -> None:
    stack = h.stack
    portal = h.portal()
    action_url = stack.webhook_url_of("webhook-2") + "/api/hubspot/action"
    secret = stack.settings["hubspot_client_secret"]
    first = f"ap-{portal}-{uuid.uuid4().int % 10**11}-first-0"
    body = execution(portal, first)
    # HubSpot knows the callback before it calls (the driver registers its own the same way).
    async with h.http.post(
        f"{stack.simulator_url}/_sim/callbacks",
        json={"callbacks": [{"callbackId": first, "portalId": portal}]},
    ) as r:
        assert r.status == 201, await r.text()

    token = stack.settings["throttle_api_token"]
    async with h.http.post(
        f"{stack.webhook_url}/api/config",
        json={"name": POLICY, "portalId": portal, "rate": RATE.spec(), "expiration": "P1D"},
        headers={"Authorization": f"Bearer {token}"},
    ) as r:
        assert r.status == 201, await r.text()
    answered = time.monotonic()
    timestamp = int(time.time() * 1000)
    headers = {
        "Content-Type": "application/json",
        "X-HubSpot-Signature-v3": sign_v3(secret, "POST", action_url, body, timestamp),
        "X-HubSpot-Request-Timestamp": str(timestamp),
    }
    sent_after = time.monotonic() - answered
    async with h.http.post(action_url, data=body, headers=headers) as r:
        status, answer = r.status, await r.text()
    assert sent_after < 0.010, f"the first execution left {sent_after * 1000:.1f} ms after"
    assert status == 200, answer
    assert json.loads(answer)["outputFields"]["hs_execution_state"] == "BLOCK", answer

    plan: dict[str, Any] = {
        "actionUrl": action_url,
        "executions": MORE,
        "portals": [portal],
        "policy": POLICY,
        "concurrency": 32,
        "max_attempts": 12,
        "retry_backoff_s": 0.25,
    }
    async with h.http.post(f"{stack.simulator_url}/_sim/drive", json=plan) as r:
        drive = await r.json()
        assert r.status == 200, drive
    assert drive["answers"] == {"BLOCK": MORE}, drive
    assert drive["gave_up"] == 0, drive

    settle_s = (MORE + 1) / RATE.limit * RATE.period_s + 30
    settled = await h.settle(portal, settle_s)
    report = await h.report(portal)
    assert settled, f"executions still open after the drain: {report}"
    completions = await h.completions(portal)
    ids = Counter(cb for cb, _ in completions)
    assert report["blocked"] == MORE + 1
    assert len(ids) == MORE + 1, f"{len(ids)} of {MORE + 1} completed"
    assert max(ids.values()) == 1
    assert int(report.get("duplicates", 0)) == 0
    assert first in ids
    # The rate: no window of the period releases more than limit + burst (the release instants
    # the engine records, as the fault table judges). HubSpot's own view cannot be held to the
    # same window: the dispatcher batches completions within the portal's API budget (about
    # ten calls a second), so a call carries what was released while the budget was spent.
    allowed = RATE.limit + RATE.burst
    released = max_in_window(await h.release_times(portal, POLICY), RATE.period_s)
    assert released <= allowed, f"{released} releases in one window; limit {allowed}"
    # From HubSpot's side, at the rate and not faster: the completions span at least the time
    # the rate needs for all but one window's worth (less a second: the first call may wait).
    times = sorted(at for _, at in completions)
    needed = (len(times) - allowed) * RATE.period_s / RATE.limit - 1.0
    assert times[-1] - times[0] >= needed, f"completed in {times[-1] - times[0]:.1f} s"
    assert h.secrets_in_logs() == []


@pytest.mark.chaos
@pytest.mark.timeout(300)
def test_a_new_policy_holds_the_first_execution_on_another_webhook(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    # Under the repository (not /tmp): PostgreSQL runs as `nobody` when we are root.
    name = f"chaos-arrival-{tmp_path_factory.getbasetemp().name}"
    # The chart's lease (60 s): the harness' 8 s is for killing dispatchers, and too short for
    # the dispatcher to keep budget-held executions together for one call.
    root = Path(__file__).resolve().parents[2] / ".local" / name
    harness = Harness(root, webhooks=2, lease_seconds=60.0)

    async def run() -> None:
        await harness.start(portals=1)
        try:
            await scenario(harness)
        finally:
            await harness.stop()

    asyncio.run(run())
