"""Bad inline-rate field values never get a 5xx and never pass unthrottled (fuzzed).

Hypothesis sends signed executions whose inline fields hold anything a workflow could put there
(zero, negative, huge and fractional numbers, text, unknown units and days, dates in the past
or nonsense, JSON of any shape) to the live webhook. Every one must be answered BLOCK and be
queued in an inline queue whose rate is within the portal's ceiling; a value the queue did not
take as it is must come with a note for the builder.
"""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.fixtures.live_webhook import PORTAL, LiveWebhook, dumps, execution
from throttle.engine import keys
from throttle.engine.inline import FIELDS
from throttle.engine.inline_index import inline_load
from throttle.webhook_service.appkeys import QUEUE

CEILING_PORTAL = PORTAL + 1
"""A portal whose default policy sets a ceiling of 5 a minute (PORTAL has no policy at all)."""

numbers = st.one_of(
    st.integers(-(10**12), 10**12).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(str),
    st.sampled_from(["0", "-1", "1e400", "0.0001", "1.5", " 3 ", "1_000", "0x10", "", "NaN"]),
)
texts = st.text(max_size=60)
dates = st.one_of(
    st.integers(-(10**16), 10**16).map(str),
    st.sampled_from(["2001-01-01T00:00:00Z", "2999-01-01", "yesterday", "31/12/2026", "9" * 300]),
)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=8), children, max_size=3)
    ),
    max_leaves=8,
)
field_values = {
    "rate_count": numbers | texts | json_values,
    "rate_every": numbers | texts | json_values,
    "rate_unit": st.sampled_from(["seconds", "Minutes", "h", "fortnights", "", "días"]) | texts,
    "queue_name": texts | st.sampled_from(["ok-name", "UPPER case", "-", "x" * 80]),
    "release_days": st.sampled_from(["Mon;Tue", "Funday", "mon,sat", ";", "Sun"]) | texts,
    "first_release_at": dates | texts | json_values,
}


@st.composite
def inline_inputs(draw: st.DrawFn) -> dict[str, Any]:
    chosen = draw(st.lists(st.sampled_from(FIELDS), min_size=1, unique=True))
    return {name: draw(field_values[name]) for name in chosen}


@pytest.fixture(scope="module")
def inline_fuzz_webhook(module_webhook: LiveWebhook) -> LiveWebhook:
    """The module's live service; CEILING_PORTAL's default policy caps inline rates at 5/min."""
    module_webhook.add_policy(
        "default", portal=CEILING_PORTAL, inline={"maxRate": {"limit": 5, "period": "1m"}}
    )
    return module_webhook


@given(inputs=inline_inputs(), portal=st.sampled_from([PORTAL, CEILING_PORTAL]))
@settings(
    max_examples=120,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    database=None,
)
def test_bad_inline_values_are_held_under_the_ceiling(
    inputs: dict[str, Any], portal: int, inline_fuzz_webhook: LiveWebhook
) -> None:
    live = inline_fuzz_webhook
    callback = f"fuzz-{uuid.uuid4().hex}"
    payload = execution(callback, portal=portal, inputFields=inputs)
    body = dumps(payload)
    response = live.post_signed("/api/hubspot/action", body)
    carries_inline = any(
        (v if isinstance(v, str) else json.dumps(v)).strip()
        for v in inputs.values()
        if v is not None
    )
    if not carries_inline:
        return  # an old-style execution (every inline field empty): not what this test is about
    assert response.status_code == 200, response.text
    assert response.json()["outputFields"]["hs_execution_state"] == "BLOCK", response.text

    async def where() -> list[Any]:
        redis = live.app[QUEUE].redis  # type: ignore[index]
        found = []
        for p, note in await inline_load(redis):
            if p.portal_id == portal and await redis.hexists(keys.meta(p.key), callback):
                found.append((p, note))
        return found

    [(policy, note)] = live.run(where())
    ceiling_per_second = 5 / 60 if portal == CEILING_PORTAL else 600 / 60
    assert policy.rate.limit / policy.rate.period.total_seconds() <= ceiling_per_second + 1e-9
    assert policy.paused is False
    asked = _as_asked(inputs)
    if asked is not None and asked != (policy.rate.limit, policy.rate.period.total_seconds()):
        assert note, f"{inputs} held at {policy.rate} without a note"


def _as_asked(inputs: dict[str, Any]) -> tuple[int, float] | None:
    """The rate the fields ask for, when they plainly ask for one (else None)."""
    try:
        count = int(str(inputs.get("rate_count")))
        every = float(str(inputs.get("rate_every", "1")))
    except ValueError:
        return None
    unit = {"seconds": 1, "minutes": 60}.get(str(inputs.get("rate_unit", "minutes")))
    if unit is None or count < 1 or every <= 0:
        return None
    return count, every * unit


def test_the_fuzz_portal_setup_holds(inline_fuzz_webhook: LiveWebhook) -> None:
    """The ceiling portal's default policy is loaded (else the fuzz would judge the wrong cap)."""
    live = inline_fuzz_webhook
    body = dumps(
        execution(f"setup-{time.time()}", portal=CEILING_PORTAL, inputFields={"rate_count": "99"})
    )
    assert live.post_signed("/api/hubspot/action", body).status_code == 200

    async def rates() -> list[int]:
        redis = live.app[QUEUE].redis  # type: ignore[index]
        return [p.rate.limit for p, _ in await inline_load(redis) if p.portal_id == CEILING_PORTAL]

    assert 5 in live.run(rates())
