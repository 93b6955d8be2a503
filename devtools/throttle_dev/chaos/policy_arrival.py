"""A policy created the instant before traffic: in force on every webhook process from the first
execution after the config API answered.

It needs a stack of its own (two webhook processes, and the chart's 60 s lease so that budget-held
executions stay together for one call), so it is not a `Scenario` of the shared harness; `make
chaos` runs it after them and adds its row to the table, and `tests/e2e` runs it in `make test`.
"""

from __future__ import annotations

import json
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

from throttle.hubspot.signatures import sign_v3
from throttle_dev.chaos.harness import FaultRow, Harness, Rate
from throttle_dev.demo.measure import max_in_window

TITLE = "policy created, first action on another webhook within 10 ms"
RATE = Rate(limit=100, period_s=1, burst=0)
MORE = 1_000
POLICY = "arrival"


def harness_for(root: Path, keep: bool = False) -> Harness:
    return Harness(root, webhooks=2, lease_seconds=60.0, keep=keep)


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


async def policy_arrival(h: Harness) -> FaultRow:
    """Create the policy through webhook A, send the first execution to webhook B (whose periodic
    reload is up to 2 s away) within 10 ms of the answer, then 1,000 more; judge what HubSpot
    saw."""
    started = time.monotonic()
    row = FaultRow(TITLE, allowed=RATE.limit + RATE.burst)
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
        if r.status != 201:
            row.unmet.append(f"the simulator refused the callback: {await r.text()}")
            return row
    token = stack.settings["throttle_api_token"]
    async with h.http.post(
        f"{stack.webhook_url}/api/config",
        json={"name": POLICY, "portalId": portal, "rate": RATE.spec(), "expiration": "P1D"},
        headers={"Authorization": f"Bearer {token}"},
    ) as r:
        if r.status != 201:
            row.unmet.append(f"the config API answered {r.status}: {await r.text()}")
            return row
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
    if sent_after >= 0.010:
        row.unmet.append(f"the first execution left {sent_after * 1000:.1f} ms after the answer")
    first_state = json.loads(answer).get("outputFields", {}) if status == 200 else {}
    if first_state.get("hs_execution_state") != "BLOCK":
        row.unmet.append(f"the first execution was answered {status} {answer[:200]}, not BLOCK")
    row.notes.append(
        f"first execution sent {sent_after * 1000:.1f} ms after the config API answered"
    )

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
    row.answers = {k: int(v) for k, v in drive.get("answers", {}).items()}
    row.gave_up = int(drive.get("gave_up", 0))
    if row.answers != {"BLOCK": MORE}:
        row.unmet.append(f"answers after the first: {row.answers}")

    settle_s = (MORE + 1) / RATE.limit * RATE.period_s + 30
    await h.settle(portal, settle_s)
    report = await h.report(portal)
    completions = await h.completions(portal)
    ids = Counter(cb for cb, _ in completions)
    row.sent = MORE + 1
    row.blocked = int(report["blocked"])
    row.completed = len(ids)
    row.duplicates = int(report.get("duplicates", 0)) + sum(n - 1 for n in ids.values())
    row.lost = row.blocked - row.completed
    if first not in ids:
        row.unmet.append("the first execution was never completed")
    # The rate, at the release instants the engine records (as the fault table judges).
    row.max_window = max_in_window(await h.release_times(portal, POLICY), RATE.period_s)
    # From HubSpot's side, at the rate and not faster: the completions span at least the time
    # the rate needs for all but one window's worth (less a second: the first call may wait).
    times = sorted(at for _, at in completions)
    if times:
        needed = (len(times) - row.allowed) * RATE.period_s / RATE.limit - 1.0
        if times[-1] - times[0] < needed:
            row.unmet.append(f"HubSpot saw them completed in {times[-1] - times[0]:.1f} s")
    row.secrets_in_logs = h.secrets_in_logs()
    row.elapsed_s = time.monotonic() - started
    return row
