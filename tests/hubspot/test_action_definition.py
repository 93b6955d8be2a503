"""Every output field Throttle sends is declared in the action definition HubSpot registers.

HubSpot only shows (and lets later workflow steps use) output fields the definition declares, so
a field the webhook or the completer sends but the definition lacks would silently vanish.
"""

from __future__ import annotations

import json
from dataclasses import replace
from importlib import resources
from typing import Any

from throttle.dispatcher.hubspot_completer import output_fields
from throttle.engine.policy import Policy
from throttle.engine.priority import FIELD as PRIORITY_FIELD
from throttle.engine.priority import NAMES, parse_priority
from throttle.engine.queue import Released
from throttle.webhook_service import actions

HUBSPOT_STATES = {"hs_execution_state", "hs_expiration_duration"}


def definition() -> dict[str, Any]:
    text = resources.files("throttle.hubspot").joinpath("action_definition.json").read_text()
    loaded: dict[str, Any] = json.loads(text)
    return loaded


def declared_outputs() -> dict[str, dict[str, Any]]:
    return {f["typeDefinition"]["name"]: f for f in definition()["outputFields"]}


def sent_by_webhook() -> set[str]:
    policy = Policy.model_validate(
        {"name": "p", "portalId": 1, "rate": {"limit": 1, "period": "1s"}}
    )
    answers = [actions.passed(policy, "overflow"), actions.failed("no policy", policy)]
    return {name for answer in answers for name in answer["outputFields"]}


def test_every_output_field_sent_is_declared_and_labelled() -> None:
    released = Released(
        callback_id="cb", portal_id=1, policy="p", queue="q",
        enqueued_at=0.0, attempts=1, wait_seconds=3.0,
        priority=parse_priority("not a priority"),
    )  # fmt: skip
    inline = replace(released, policy="inline.q.newsletter")  # an inline queue's completion
    sent = (
        set(output_fields(released)) | set(output_fields(inline)) | sent_by_webhook()
    ) - HUBSPOT_STATES
    assert {"throttle_priority", "throttle_priority_reason"} <= sent
    declared = declared_outputs()
    assert sent <= set(declared), f"undeclared output fields: {sorted(sent - set(declared))}"
    labels = definition()["labels"]["en"]["outputFieldLabels"]
    assert set(declared) == set(labels), "every declared output field has an English label"


def test_status_values_sent_are_options_of_the_status_field() -> None:
    options = {
        o["value"] for o in declared_outputs()["throttle_status"]["typeDefinition"]["options"]
    }
    policy = Policy.model_validate(
        {"name": "p", "portalId": 1, "rate": {"limit": 1, "period": "1s"}}
    )
    for answer in (actions.passed(policy, "x"), actions.failed("x")):
        assert answer["outputFields"]["throttle_status"] in options


def test_every_status_option_is_a_value_throttle_sends() -> None:
    """An option nothing sends misleads whoever builds a workflow branch on it."""
    options = {
        o["value"] for o in declared_outputs()["throttle_status"]["typeDefinition"]["options"]
    }
    policy = Policy.model_validate(
        {"name": "p", "portalId": 1, "rate": {"limit": 1, "period": "1s"}}
    )
    sent = {
        answer["outputFields"]["throttle_status"]
        for answer in (actions.passed(policy, "x"), actions.failed("x"))
    }
    for state in ("SUCCESS", "FAIL_CONTINUE"):
        released = Released(
            callback_id="cb", portal_id=1, policy="p", queue="q", enqueued_at=0.0,
            attempts=1, wait_seconds=3.0, execution_state=state,
        )  # fmt: skip
        sent.add(output_fields(released)["throttle_status"])
    assert options == sent, f"declared but never sent: {sorted(options - sent)}"


def test_the_priority_field_takes_a_static_value_or_a_property() -> None:
    """A builder picks a level or maps a record's property (HubSpot then sends its value);
    every option offered is a priority the webhook reads."""
    field = next(
        f for f in definition()["inputFields"] if f["typeDefinition"]["name"] == PRIORITY_FIELD
    )
    assert field["supportedValueTypes"] == ["STATIC_VALUE", "OBJECT_PROPERTY"]
    assert field["isRequired"] is False
    values = [o["value"] for o in field["typeDefinition"]["options"]]
    assert set(values) == set(NAMES) | {str(level) for level in range(10)}
    assert all(parse_priority(v).readable for v in values)
    assert PRIORITY_FIELD in definition()["labels"]["en"]["inputFieldLabels"]
