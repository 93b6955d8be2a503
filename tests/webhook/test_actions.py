"""The action endpoint end to end on real Redis: answers, duplicates, overflow, bad input."""

from __future__ import annotations

import asyncio
import itertools
import json
from datetime import UTC, datetime, timedelta

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.fixtures.webhook import ACTION_DEF, PORTAL, StartWebhook, Webhook, execution, policy
from throttle.engine import keys
from throttle.webhook_service.appkeys import QUEUE


async def test_queued_execution_is_blocked_with_the_policy_expiration(webhook: Webhook) -> None:
    p = await webhook.add_policy(policy(expiration="P2D"))
    status, body = await webhook.post_action(execution())
    assert status == 200
    assert body == {
        "outputFields": {"hs_execution_state": "BLOCK", "hs_expiration_duration": "P2D"}
    }
    assert await webhook.depth(p) == 1


async def test_v2_signature_is_refused_by_default(webhook: Webhook) -> None:
    """A v2 request signs no time: replayed after the dedupe window it would be queued again."""
    p = await webhook.add_policy(policy())
    status, body = await webhook.post_action(execution(), version="v2")
    assert status == 401
    assert body["detail"] == "v2 signatures are not accepted (HubSpot signs v3)"
    assert await webhook.depth(p) == 0


async def test_v2_signature_is_accepted_while_its_span_is_open(start_webhook: StartWebhook) -> None:
    webhook = await start_webhook(allow_signature_v2_until=datetime.now(UTC) + timedelta(hours=1))
    p = await webhook.add_policy(policy())
    status, body = await webhook.post_action(execution(), version="v2")
    assert status == 200
    assert body["outputFields"]["hs_execution_state"] == "BLOCK"
    assert await webhook.depth(p) == 1


async def test_duplicate_callback_gets_the_same_answer_and_is_queued_once(webhook: Webhook) -> None:
    p = await webhook.add_policy(policy())
    first = await webhook.post_action(execution("ap-dup"))
    second = await webhook.post_action(execution("ap-dup"))
    assert first == second
    assert first[1]["outputFields"]["hs_execution_state"] == "BLOCK"
    assert await webhook.depth(p) == 1


async def test_resolution_falls_back_to_the_portal_default(webhook: Webhook) -> None:
    default = await webhook.add_policy(policy("default", expiration="PT12H"))
    status, body = await webhook.post_action(execution(inputFields={}))
    assert status == 200
    assert body["outputFields"]["hs_expiration_duration"] == "PT12H"
    assert await webhook.depth(default) == 1


async def test_no_policy_at_all_fails_continue_with_a_reason(webhook: Webhook) -> None:
    status, body = await webhook.post_action(execution())
    assert status == 200
    fields = body["outputFields"]
    assert fields["hs_execution_state"] == "FAIL_CONTINUE"
    assert fields["throttle_reason"] == (
        f"portal {PORTAL} has no policy named 'enrichment', no policy for action {ACTION_DEF} "
        "and no default policy (its own or the global one)"
    )


async def test_overflow_continue_answers_success(webhook: Webhook) -> None:
    # 1 per day with a 1-minute expiration: capacity 1 (+burst 0), the second does not fit.
    p = await webhook.add_policy(
        policy(rate={"limit": 1, "period": "P1D"}, expiration="PT1M", overflow="Continue")
    )
    answers = [(await webhook.post_action(execution(f"cb-{i}")))[1] for i in range(3)]
    states = [a["outputFields"]["hs_execution_state"] for a in answers]
    assert states[0] == "BLOCK"
    assert states[-1] == "SUCCESS"
    assert answers[-1]["outputFields"]["throttle_status"] == "passed"
    assert await webhook.depth(p) == states.count("BLOCK")


async def test_overflow_fail_answers_fail_continue_with_reason(webhook: Webhook) -> None:
    p = await webhook.add_policy(
        policy(rate={"limit": 1, "period": "P1D"}, expiration="PT1M", overflow="Fail")
    )
    answers = [(await webhook.post_action(execution(f"cb-{i}")))[1] for i in range(3)]
    last = answers[-1]["outputFields"]
    assert answers[0]["outputFields"]["hs_execution_state"] == "BLOCK"
    assert last["hs_execution_state"] == "FAIL_CONTINUE"
    assert "expiration PT1M" in last["throttle_reason"]
    assert last["throttle_policy"] == "enrichment"
    assert await webhook.depth(p) < 3


async def test_overflow_block_queues_anyway(webhook: Webhook) -> None:
    p = await webhook.add_policy(
        policy(rate={"limit": 1, "period": "P1D"}, expiration="PT1M", overflow="Block")
    )
    for i in range(3):
        _status, body = await webhook.post_action(execution(f"cb-{i}"))
        assert body["outputFields"]["hs_execution_state"] == "BLOCK"
    assert await webhook.depth(p) == 3


async def test_paused_and_failing_policy_fails_continue(webhook: Webhook) -> None:
    p = await webhook.add_policy(policy(paused=True, overflow="Fail"))
    status, body = await webhook.post_action(execution())
    assert status == 200
    assert body["outputFields"]["hs_execution_state"] == "FAIL_CONTINUE"
    assert "is paused" in body["outputFields"]["throttle_reason"]
    assert await webhook.depth(p) == 0


async def test_uninstalled_and_unknown_portals_fail_continue(start_webhook) -> None:  # type: ignore[no-untyped-def]
    webhook = await start_webhook(require_installed_portal=True)
    p = await webhook.add_policy(policy())
    await webhook.install(PORTAL, stopped={555: "refresh token refused"})
    _, body = await webhook.post_action(execution())
    assert body["outputFields"]["hs_execution_state"] == "BLOCK"

    await webhook.add_policy(policy(portal=555))
    _, body = await webhook.post_action(execution("cb-x", portal=555))
    assert body["outputFields"]["hs_execution_state"] == "FAIL_CONTINUE"
    assert "uninstalled" in body["outputFields"]["throttle_reason"]

    # Never seen: maybe installed a moment ago through another pod, so 503 (HubSpot retries)
    # and the installs are re-read at once; still unknown after that → not installed.
    p777 = await webhook.add_policy(policy(portal=777))
    status, body = await webhook.post_action(execution("cb-y", portal=777))
    assert status == 503
    assert "not known yet" in body["detail"]
    await asyncio.sleep(1.0)  # the early refresh (the periodic one is 5 s away)
    status, body = await webhook.post_action(execution("cb-y", portal=777))
    assert status == 200
    assert body["outputFields"]["hs_execution_state"] == "FAIL_CONTINUE"
    assert "not installed" in body["outputFields"]["throttle_reason"]
    assert await webhook.depth(p) == 1
    assert await webhook.depth(p777) == 0


async def test_a_portal_installed_through_another_pod_is_seen_at_once(
    start_webhook,  # type: ignore[no-untyped-def]
) -> None:
    webhook = await start_webhook(require_installed_portal=True)
    p = await webhook.add_policy(policy())
    await webhook.install(1)  # some other portal: the snapshot is loaded
    # Another pod's OAuth callback installs PORTAL; this pod's mirror is written by that pod.
    await webhook.app[QUEUE].redis.set(
        keys.INSTALLED_PORTALS, json.dumps({"installed": [1, PORTAL], "stopped": {}})
    )
    status, _ = await webhook.post_action(execution("cb-1"))
    assert status == 503
    await asyncio.sleep(1.0)
    status, body = await webhook.post_action(execution("cb-1"))
    assert status == 200
    assert body["outputFields"]["hs_execution_state"] == "BLOCK"
    assert await webhook.depth(p) == 1


async def test_unknown_fields_are_accepted(webhook: Webhook) -> None:
    await webhook.add_policy(policy())
    payload = execution(newTopLevel={"x": [1, 2]})
    payload["origin"]["extensionDefinitionId"] = 9
    status, body = await webhook.post_action(payload)
    assert status == 200
    assert body["outputFields"]["hs_execution_state"] == "BLOCK"


async def test_payload_errors_name_the_field(webhook: Webhook) -> None:
    p = await webhook.add_policy(policy())
    cases = {
        "callbackId": execution(callbackId=""),
        "origin": {k: v for k, v in execution().items() if k != "origin"},
        "origin.portalId": execution(origin={"portalId": "abc", "actionDefinitionId": 1}),
        "origin.actionDefinitionId": execution(origin={"portalId": 5}),
        "object.objectType": execution(object={"objectId": 1}),
        "inputFields.policy": execution(inputFields={"policy": 12}),
    }
    for field, payload in cases.items():
        status, body = await webhook.post_action(payload)
        assert status == 400, field
        assert body["field"] == field, body
        assert body["error"] == "invalid_payload"
    for raw in (b"{not json", b"[1,2]", b'"x"', b"[" * 100 + b"]" * 100):
        status, body = await webhook.post_action(raw)
        assert status == 400, raw
        assert set(body) >= {"error", "detail"}
    assert await webhook.depth(p) == 0


async def test_body_over_the_limit_is_413(start_webhook) -> None:  # type: ignore[no-untyped-def]
    webhook = await start_webhook(webhook_max_body_bytes=2048)
    payload = execution(inputFields={"policy": "enrichment", "pad": "x" * 4096})
    status, body = await webhook.post_action(payload)
    assert status == 413
    assert body["error"] == "request_entity_too_large"


async def test_signature_failures_are_401_and_queue_nothing(webhook: Webhook) -> None:
    p = await webhook.add_policy(policy())
    for n in range(2):  # among HubSpot's valid requests (from a cold start: test_secret_rotation)
        assert (await webhook.post_action(execution(f"cb-valid-{n}")))[0] == 200
    body = json.dumps(execution()).encode()
    wrong = await webhook.client.post(
        "/api/hubspot/action", data=body, headers=webhook.signed(body, secret="not-the-secret")
    )
    assert wrong.status == 401
    assert (await wrong.json())["error"] == "invalid_signature"
    missing = await webhook.client.post("/api/hubspot/action", data=body)
    assert missing.status == 401
    assert await webhook.depth(p) == 2


async def test_a_new_policy_is_used_as_soon_as_the_index_reloads(webhook: Webhook) -> None:
    _, body = await webhook.post_action(execution("cb-1"))
    assert body["outputFields"]["hs_execution_state"] == "FAIL_CONTINUE"
    await webhook.add_policy(policy("default", portal=0, expiration="PT5H"))  # global default
    _, body = await webhook.post_action(execution("cb-2", inputFields={}))
    assert body["outputFields"] == {
        "hs_execution_state": "BLOCK",
        "hs_expiration_duration": "PT5H",
    }
    p = await webhook.add_policy(policy(expiration="P3D"))  # the named one now exists
    _, body = await webhook.post_action(execution("cb-3"))
    assert body["outputFields"]["hs_expiration_duration"] == "P3D"
    assert await webhook.depth(p) == 1


async def test_priority_orders_releases_from_the_webhook_on(webhook: Webhook) -> None:
    """A static level, HubSpot's names from a property, nothing (an old action), a value that
    is no priority: all are BLOCKed; the queue releases them by priority, the unreadable one
    as NONE, after the NONE that came before it."""
    p = await webhook.add_policy(policy(rate={"limit": 100, "period": "1s", "burst": 10}))
    sent = [
        ("old", None),
        ("none", "NONE"),
        ("bad", "urgent!"),
        ("low", "low"),
        ("seven", 7),
        ("high", "HIGH"),
    ]
    for cb, value in sent:
        inputs: dict[str, object] = {"policy": "enrichment"}
        if value is not None:
            inputs["priority"] = value
        status, body = await webhook.post_action(execution(cb, inputFields=inputs))
        assert (status, body["outputFields"]["hs_execution_state"]) == (200, "BLOCK")
    assert await webhook.depth(p) == len(sent)
    taken = (await webhook.app[QUEUE].take()).released
    assert [r.callback_id for r in taken] == ["high", "seven", "low", "old", "none", "bad"]
    assert [r.priority.output_fields().get("throttle_priority") for r in taken] == [
        9,
        7,
        3,
        None,
        0,
        0,
    ]
    assert "throttle_priority_reason" in taken[-1].priority.output_fields()


FUZZED = itertools.count()
JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=40),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner),
    max_leaves=6,
)


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(value=JSON_VALUES | st.sampled_from(["HIGH", " 9 ", "07", "5.0", "-0", "1e1", "NaN"]))
async def test_any_priority_value_is_held_never_refused(webhook: Webhook, value: object) -> None:
    """Whatever a property holds, the execution is held (BLOCK), never a 4xx or 5xx, and never
    let through unthrottled."""
    p = await webhook.add_policy(policy(expiration="PT6H"))
    cb = f"fuzz-{next(FUZZED)}"
    before = await webhook.depth(p)
    status, body = await webhook.post_action(
        execution(cb, inputFields={"policy": "enrichment", "priority": value})
    )
    assert (status, body["outputFields"]["hs_execution_state"]) == (200, "BLOCK")
    assert await webhook.depth(p) == before + 1
