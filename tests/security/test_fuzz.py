"""Fuzzing the endpoints open to the internet and the config API: never a 5xx, never a change of
state on a rejected request.

Two generators, both against the live service on real Redis and PostgreSQL:
- schemathesis walks /api/openapi.json (every operation, valid and invalid inputs); action and
  options bodies are signed like HubSpot signs them, config calls go with and without the bearer
  token, so the fuzz reaches the parsers and the store instead of stopping at the 401;
- hypothesis sends arbitrary JSON and valid executions with one field replaced by arbitrary JSON,
  signed, to the action and options endpoints.
After every answer ≥ 400 the fingerprint of Redis and PostgreSQL must equal the one before.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis.core import NotSet

from tests.fixtures.live_webhook import ACTION_PATH, OPTIONS_PATH, LiveWebhook, dumps, execution
from throttle.webhook_service.openapi import document

SIGNED_PATHS = (ACTION_PATH, OPTIONS_PATH)
FUZZ = settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    database=None,
)

schema = schemathesis.openapi.from_dict(document())

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False)
    | st.text(max_size=40),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4)
    ),
    max_leaves=20,
)


def _send(
    live: LiveWebhook,
    method: str,
    path: str,
    body: bytes | None,
    headers: dict[str, str],
    query: dict[str, Any] | None = None,
) -> Any:
    return live.http.request(
        method, live.url + path, data=body, headers=headers, params=query, timeout=30
    )


def _check(live: LiveWebhook, before: dict[str, str], response: Any, what: str) -> None:
    assert response.status_code < 500, f"{what}: {response.status_code} {response.text[:300]}"
    if response.status_code >= 400:
        assert live.fingerprint() == before, (
            f"{what}: rejected ({response.status_code}) but state changed"
        )
        if response.headers.get("Content-Type", "").startswith("application/json"):
            body = response.json()
            assert "error" in body, body
            assert "detail" in body, body


@pytest.fixture(scope="module")
def webhook_with_policy(module_webhook: LiveWebhook) -> LiveWebhook:
    """The module's service with the policy valid executions name, so the fuzz reaches the queue."""
    module_webhook.add_policy()
    return module_webhook


@schema.parametrize()
@FUZZ
def test_every_operation_of_the_openapi_document(
    case: Any, webhook_with_policy: LiveWebhook
) -> None:
    live = webhook_with_policy
    path = case.formatted_path
    body: bytes | None = None
    if not isinstance(case.body, NotSet):
        body = case.body if isinstance(case.body, bytes) else json.dumps(case.body).encode()
    headers = {k: str(v) for k, v in (case.headers or {}).items()}
    headers.setdefault("Content-Type", case.media_type or "application/json")
    if path in SIGNED_PATHS:
        headers.update(live.signed(body or b"", path))
    query = case.query if not isinstance(case.query, NotSet) else None
    attempts = [headers]
    if path.startswith("/api/config"):
        attempts = [
            {**headers, **live.bearer()},
            headers,
            {**headers, **live.bearer("not-the-token")},
        ]
    for attempt in attempts:
        before = live.fingerprint()
        response = _send(live, case.method, path, body, attempt, query)
        _check(live, before, response, f"{case.method} {path}")


@given(payload=json_values, path=st.sampled_from(SIGNED_PATHS))
@FUZZ
def test_arbitrary_signed_json(payload: Any, path: str, module_webhook: LiveWebhook) -> None:
    live = module_webhook
    before = live.fingerprint()
    body = dumps(payload)
    response = _send(live, "POST", path, body, live.signed(body, path))
    _check(live, before, response, f"POST {path}")
    assert response.status_code in (200, 400), response.text


@given(
    field=st.sampled_from(
        [
            "callbackId",
            "origin",
            "context",
            "object",
            "inputFields",
            "portalId",
            "actionDefinitionId",
        ]
    ),
    value=json_values,
    path=st.sampled_from(SIGNED_PATHS),
)
@FUZZ
def test_a_valid_execution_with_one_field_replaced(
    field: str, value: Any, path: str, module_webhook: LiveWebhook
) -> None:
    live = module_webhook
    payload = execution()
    if field in ("portalId", "actionDefinitionId"):
        payload["origin"][field] = value
    else:
        payload[field] = value
    before = live.fingerprint()
    body = dumps(payload)
    response = _send(live, "POST", path, body, live.signed(body, path))
    _check(live, before, response, f"POST {path} with {field}={value!r:.60}")


@given(raw=st.binary(max_size=300), path=st.sampled_from(SIGNED_PATHS))
@FUZZ
def test_signed_bytes_that_are_not_json(raw: bytes, path: str, module_webhook: LiveWebhook) -> None:
    live = module_webhook
    before = live.fingerprint()
    response = _send(live, "POST", path, raw, live.signed(raw, path))
    _check(live, before, response, f"POST {path} raw")
