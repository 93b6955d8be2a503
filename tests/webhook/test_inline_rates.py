"""Inline rates through the real webhook app on real Redis: the action's own fields hold
executions in an inline queue whose rate holds like a policy's, under the portal's ceiling.

Executions are sent signed, as HubSpot sends them; releases are driven by dispatchers on a
clock the test moves (tests/fixtures/simulation.py), so 100+ periods run in a second or two.
"""

from __future__ import annotations

import time
from typing import Any

from tests.fixtures.simulation import Simulation, max_in_window
from tests.fixtures.webhook import ACTION_DEF, PORTAL, StartWebhook, Webhook, execution, policy
from throttle.dispatcher.hubspot_completer import output_fields
from throttle.engine import keys
from throttle.engine.inline_index import InlineNotes, inline_load
from throttle.engine.policy import Policy
from throttle.webhook_service.appkeys import POLICY_INDEX, QUEUE

WORKFLOW_A = 192814114
WORKFLOW_B = 192814115


def inline_execution(cb: str, workflow: int = WORKFLOW_A, **fields: Any) -> dict[str, Any]:
    return execution(
        cb,
        context={"source": "WORKFLOWS", "workflowId": workflow},
        inputFields={k: v for k, v in fields.items() if v is not None},
    )


async def inline_queues(webhook: Webhook) -> dict[str, tuple[Policy, str]]:
    """The inline queues Redis holds, by policy name, with their notes."""
    return {p.name: (p, note) for p, note in await inline_load(webhook.app[QUEUE].redis)}


async def send(webhook: Webhook, count: int, prefix: str, **kw: Any) -> None:
    for i in range(count):
        status, body = await webhook.post_action(inline_execution(f"{prefix}-{i}", **kw))
        assert status == 200, body
        assert body["outputFields"]["hs_execution_state"] == "BLOCK", body


async def release_all(webhook: Webhook, policies: list[Policy], seconds: float) -> Simulation:
    """Run dispatchers over `seconds` of the moved clock, starting now (the queues are full)."""
    sim = Simulation(webhook.app[QUEUE].redis, policies)
    start = time.time() + 1.5  # past the dispatcher's minimum hold
    await sim.run([], start, max_steps=20_000, until=start + seconds)
    return sim


def assert_rate_holds(sim: Simulation, p: Policy, released: int) -> None:
    """No window of the period over the limit; the mean rate within 1% of the limit's."""
    times = sorted(r.released_at_us for r in sim.completer.completed if r.policy == p.name)
    assert len(times) == released
    period = p.rate.period.total_seconds()
    assert max_in_window(times, period) <= p.rate.limit + p.rate.burst
    times = times[p.rate.burst :]  # the saved-up releases go at once; the rest at the rate
    span = (times[-1] - times[0]) / 1e6
    assert span >= 100 * period, "at least 100 periods"
    rate = (len(times) - 1) / span
    expected = p.rate.limit / period
    assert abs(rate - expected) / expected < 0.01, (rate, expected)


async def test_inline_rate_holds_over_a_hundred_periods(webhook: Webhook) -> None:
    await send(webhook, 206, "a", rate_count="2", rate_every="1", rate_unit="seconds")
    (name, (p, note)), *others = (await inline_queues(webhook)).items()
    assert not others
    assert note == ""
    assert name.startswith(f"inline.w{WORKFLOW_A}.a{ACTION_DEF}.")
    assert (p.rate.limit, p.rate.period.total_seconds(), p.rate.burst) == (2, 1.0, 1)
    assert (await webhook.app[QUEUE].stats(p)).depth == 206
    sim = await release_all(webhook, [p], 110)
    assert_rate_holds(sim, p, 206)


async def test_two_workflows_with_different_inline_rates_are_independent(webhook: Webhook) -> None:
    await send(webhook, 120, "a", workflow=WORKFLOW_A, rate_count="1", rate_unit="seconds")
    await send(
        webhook, 310, "b", workflow=WORKFLOW_B, rate_count="3", rate_every="1", rate_unit="s"
    )
    queues = await inline_queues(webhook)
    assert len(queues) == 2
    a, b = (queues[n][0] for n in sorted(queues))
    assert sorted([a.rate.limit, b.rate.limit]) == [1, 3]
    sim = await release_all(webhook, [a, b], 125)
    for p in (a, b):
        assert_rate_holds(sim, p, 120 if p.rate.limit == 1 else 310)


async def test_a_named_queue_combines_workflows(webhook: Webhook) -> None:
    fields = {"rate_count": "3", "rate_unit": "seconds", "queue_name": "Nightly Sync"}
    await send(webhook, 160, "a", workflow=WORKFLOW_A, **fields)
    await send(webhook, 160, "b", workflow=WORKFLOW_B, **fields)
    queues = await inline_queues(webhook)
    assert list(queues) == ["inline.q.nightly-sync"]
    shared = queues["inline.q.nightly-sync"][0]
    sim = await release_all(webhook, [shared], 110)
    assert_rate_holds(sim, shared, 320)  # both workflows' executions under one rate
    by_workflow = {cb[0] for cb in (r.callback_id for r in sim.completer.completed)}
    assert by_workflow == {"a", "b"}


async def test_the_portal_ceiling_clamps_the_rate_and_says_so(webhook: Webhook) -> None:
    ceiling = {"maxRate": {"limit": 1, "period": "1s"}, "maxDailyTotal": 100_000}
    await webhook.add_policy(policy("default", inline=ceiling))
    await send(webhook, 105, "a", rate_count="10", rate_unit="seconds")
    (p, note), *_ = (await inline_queues(webhook)).values()
    assert (p.rate.limit, p.rate.period.total_seconds()) == (1, 1.0)
    assert p.daily_cap is not None
    assert p.daily_cap.limit == 100_000
    assert note == "rate 10 per 1 second clamped to the portal's ceiling of 1 per 1 second"
    sim = await release_all(webhook, [p], 110)
    assert_rate_holds(sim, p, 105)
    notes = InlineNotes(webhook.app[QUEUE].redis)
    await notes.load([p.key])
    fields = output_fields(sim.completer.completed[0], notes)
    assert fields["throttle_applied"] == "inline"
    assert fields["throttle_policy"] == p.name
    assert fields["throttle_reason"] == note


async def test_the_ceiling_caps_the_daily_total(webhook: Webhook) -> None:
    await webhook.add_policy(policy("default", inline={"maxDailyTotal": 3}))
    await send(webhook, 10, "a", rate_count="100", rate_unit="minutes")
    (p, note), *_ = (await inline_queues(webhook)).values()
    assert p.daily_cap is not None
    assert p.daily_cap.limit == 3
    assert "at most 3 a day" in note
    sim = await release_all(webhook, [p], 60)
    assert len(sim.completer.completed) == 3


async def test_the_first_execution_costs_one_more_round_trip_later_ones_none(
    webhook: Webhook,
) -> None:
    redis = webhook.app[QUEUE].redis

    async def script_calls() -> int:
        stats = await redis.info("commandstats")
        return int(stats.get("cmdstat_evalsha", {}).get("calls", 0))

    fields = {"rate_count": "5", "rate_unit": "minutes"}
    before = await script_calls()
    await send(webhook, 1, "first", **fields)
    first = await script_calls()
    await send(webhook, 3, "later", **fields)
    later = await script_calls()
    assert first - before == 2  # ensure_inline's one script call, then the enqueue
    assert later - first == 3  # the enqueue only


async def test_editing_the_fields_changes_the_rate_from_the_next_execution(
    webhook: Webhook,
) -> None:
    await send(webhook, 2, "old", rate_count="5", rate_unit="minutes")
    await send(webhook, 2, "new", rate_count="7", rate_unit="minutes")
    queues = sorted((p.rate.limit, p.name) for p, _note in (await inline_queues(webhook)).values())
    assert [limit for limit, _name in queues] == [5, 7]
    for p, _note in (await inline_queues(webhook)).values():
        assert (await webhook.app[QUEUE].stats(p)).depth == 2
    shared = {"queue_name": "q1", "rate_unit": "minutes"}
    await send(webhook, 1, "s1", rate_count="5", **shared)
    await send(webhook, 1, "s2", rate_count="9", **shared)
    assert (await inline_queues(webhook))["inline.q.q1"][0].rate.limit == 9


async def test_a_named_policy_takes_precedence_over_inline_fields(webhook: Webhook) -> None:
    named = await webhook.add_policy(policy("enrichment"))
    payload = inline_execution("cb-1", rate_count="5", rate_unit="minutes")
    payload["inputFields"]["policy"] = "enrichment"
    status, body = await webhook.post_action(payload)
    assert status == 200
    assert body["outputFields"]["hs_execution_state"] == "BLOCK"
    assert await webhook.depth(named) == 1
    assert await inline_queues(webhook) == {}
    payload = inline_execution("cb-2", rate_count="5", rate_unit="minutes")
    payload["inputFields"]["policy"] = "no-such-policy"
    status, body = await webhook.post_action(payload)
    assert status == 200
    assert body["outputFields"]["hs_execution_state"] == "BLOCK"
    assert len(await inline_queues(webhook)) == 1


async def test_inline_rates_switched_off_for_all(start_webhook: StartWebhook) -> None:
    webhook = await start_webhook(inline_rates_enabled=False)
    default = await webhook.add_policy(policy("default"))
    status, body = await webhook.post_action(inline_execution("cb-1", rate_count="5"))
    assert status == 200
    assert body["outputFields"]["hs_execution_state"] == "BLOCK"
    assert await webhook.depth(default) == 1
    assert await inline_queues(webhook) == {}


async def test_inline_rates_switched_off_for_one_portal(webhook: Webhook) -> None:
    default = await webhook.add_policy(policy("default", inline={"enabled": False}))
    other = await webhook.add_policy(policy("default", portal=PORTAL + 1))
    status, _ = await webhook.post_action(inline_execution("cb-1", rate_count="5"))
    assert status == 200
    assert await webhook.depth(default) == 1
    payload = inline_execution("cb-2", rate_count="5")
    payload["origin"]["portalId"] = PORTAL + 1
    status, _ = await webhook.post_action(payload)
    assert status == 200
    assert await webhook.depth(other) == 0
    assert [p.portal_id for p, _n in (await inline_queues(webhook)).values()] == [PORTAL + 1]


async def test_an_old_style_execution_writes_no_inline_queue(webhook: Webhook) -> None:
    p = await webhook.add_policy(policy())
    status, body = await webhook.post_action(execution())
    assert status == 200
    assert body["outputFields"]["hs_execution_state"] == "BLOCK"
    assert await webhook.depth(p) == 1
    assert await inline_queues(webhook) == {}
    assert await webhook.app[POLICY_INDEX].redis.exists(keys.inline_queues(0)) == 0


async def test_a_shared_queue_named_without_a_usable_rate_keeps_its_own(webhook: Webhook) -> None:
    """One workflow's empty or bad fields must not change the rate the others set."""
    await send(webhook, 1, "a", workflow=WORKFLOW_A, rate_count="5", queue_name="nightly")
    await send(webhook, 1, "b", workflow=WORKFLOW_B, rate_count="zero", queue_name="nightly")
    await send(webhook, 1, "c", workflow=WORKFLOW_B, queue_name="nightly")
    [(p, note)] = (await inline_queues(webhook)).values()
    assert (p.name, p.rate.limit, note) == ("inline.q.nightly", 5, "")
    assert (await webhook.app[QUEUE].stats(p)).depth == 3
    await send(webhook, 1, "d", workflow=WORKFLOW_B, rate_count="x", queue_name="fresh")
    fresh = (await inline_queues(webhook))["inline.q.fresh"]
    assert fresh[0].rate.limit == 600  # nothing to join: created at the ceiling's rate
    assert "held at the portal's ceiling of 600 per 1 minute" in fresh[1]
