"""`GET /api/openapi.json`: every endpoint of the webhook service, its bodies and its errors.

Written by hand (the routes are few) from the same pydantic models the handlers validate with,
so the request schemas cannot drift from the code; schemathesis replays it against the app in
tests/webhook/test_openapi.py and fails on any status or body the document does not list.

Read it by route group: the two endpoints HubSpot calls (`_hubspot_paths`), the config API
(`_config_paths`), the operations endpoints (`_operations_paths`) and the install flow
(`_oauth_paths`); each operation is one call of a small builder. The schemas of what the
service answers are in `ANSWER_SCHEMAS`.
"""

from __future__ import annotations

import functools
from typing import Any

from aiohttp import web
from pydantic import BaseModel

from throttle import __version__
from throttle.engine.policy import Policy
from throttle.webhook_service.payloads import ActionRequest, OptionsRequest

Json = dict[str, Any]

REF = "#/components/schemas/{model}"

ERROR_TEXT = {
    400: "Bad request: invalid JSON or a field that does not validate (named in `field`).",
    401: "Missing or invalid signature / bearer token. Nothing changed.",
    404: "No such policy (or a path that is not a route, e.g. a non-numeric portalId).",
    405: "Method not allowed.",
    409: "Another policy of the portal already covers this action.",
    413: "Body larger than WEBHOOK_MAX_BODY_BYTES.",
    429: "Too many requests: the pod sheds load (HubSpot endpoints) or this client sent too "
    "many wrong tokens (config API). Nothing changed; retry after Retry-After seconds.",
    503: "A backing service (Redis, PostgreSQL, Kubernetes API) is unavailable; retry later.",
}
"""The description of each error status, the same on every route that answers it."""

SIGNATURE_HEADERS = [
    {
        "name": name,
        "in": "header",
        "required": False,
        "schema": {"type": "string"},
        "description": description,
    }
    for name, description in (
        ("X-HubSpot-Signature-v3", "HMAC-SHA256 (base64) of method, URL, body and timestamp."),
        ("X-HubSpot-Request-Timestamp", "Epoch milliseconds; at most 5 minutes from now."),
        ("X-HubSpot-Signature", "v2 (or v1 if enabled) SHA-256 hex signature."),
        ("X-HubSpot-Signature-Version", "v1 or v2."),
    )
]
ID = {"type": "string", "pattern": "^[0-9]{1,16}$"}
PORTAL = {"name": "portalId", "in": "path", "required": True, "schema": ID}
ACTION = {"name": "actionId", "in": "path", "required": True, "schema": ID}
NAME = {"name": "name", "in": "path", "required": True, "schema": {"type": "string"}}
PORTAL_QUERY = {
    "name": "portalId",
    "in": "query",
    "required": False,
    "schema": {"type": "integer", "minimum": 0},
}
BEARER: list[dict[str, list[str]]] = [{"bearer": []}]


def _object(properties: Json, required: list[str] | None = None, **extra: Any) -> Json:
    schema: Json = {"type": "object"}
    if required is not None:
        schema["required"] = required
    return {**schema, "properties": properties, **extra}


def _string(**extra: Any) -> Json:
    return {"type": "string", **extra}


ANSWER_SCHEMAS: dict[str, Json] = {
    "Error": _object(
        {
            "error": _string(description="Machine-readable code."),
            "detail": _string(description="What went wrong, for people."),
            "field": _string(description="Dotted path of the bad field."),
        },
        ["error", "detail"],
    ),
    "ActionAnswer": _object(
        {
            "outputFields": _object(
                {
                    "hs_execution_state": _string(enum=["BLOCK", "SUCCESS", "FAIL_CONTINUE"]),
                    "hs_expiration_duration": _string(
                        description="ISO-8601 duration (with BLOCK)."
                    ),
                    "throttle_status": _string(enum=["passed", "failed"]),
                    "throttle_policy": _string(),
                    "throttle_reason": _string(),
                    "throttle_wait_seconds": {"type": "number"},
                },
                ["hs_execution_state"],
            )
        },
        ["outputFields"],
    ),
    "OptionsAnswer": _object(
        {
            "options": {
                "type": "array",
                "items": _object(
                    {"label": _string(), "value": _string(), "description": _string()},
                    ["label", "value"],
                ),
            },
            "after": _string(),
            "searchable": {"type": "boolean"},
        },
        ["options"],
    ),
    "PolicyList": _object(
        {"policies": {"type": "array", "items": {"$ref": REF.format(model="Policy")}}},
        ["policies"],
    ),
    "Health": _object({"status": _string()}),
    "Readiness": _object(
        {
            "status": _string(enum=["ready", "not ready"]),
            "checks": {"type": "object", "additionalProperties": _string()},
            "faults": {
                "type": "object",
                "additionalProperties": _string(),
                "description": "What stops completions outside this pod (e.g. "
                "hubspot_config: HubSpot refuses the app's client secret); not a readiness "
                "failure.",
            },
        },
        ["status", "checks"],
    ),
}
"""The schemas of what the service answers; the request schemas come from the pydantic models."""


# --- builders -----------------------------------------------------------------------------------


def _ref(model: str) -> Json:
    return {"$ref": REF.format(model=model)}


def _schema(model: type[BaseModel], components: Json) -> Json:
    """A reference to `model`'s schema, added (with the models it uses) to `components`."""
    schema = model.model_json_schema(by_alias=True, ref_template=REF)
    for name, definition in schema.pop("$defs", {}).items():
        components[name] = definition
    components[model.__name__] = schema
    return _ref(model.__name__)


def _json(schema: Json, description: str) -> Json:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _errors(*codes: int) -> Json:
    return {str(code): _json(_ref("Error"), ERROR_TEXT[code]) for code in codes}


def _body(schema: Json) -> Json:
    return {"required": True, "content": {"application/json": {"schema": schema}}}


def _operation(summary: str, tag: str, responses: Json, **extra: Any) -> Json:
    """One operation: `extra` (parameters, requestBody) goes between its tags and responses."""
    return {"summary": summary, "tags": [tag], **extra, "responses": responses}


def _signed_post(summary: str, tag: str, body: Json, responses: Json) -> Json:
    """A POST HubSpot signs (the action, the options, the uninstall events)."""
    return {
        "post": _operation(
            summary, tag, responses, parameters=SIGNATURE_HEADERS, requestBody=_body(body)
        )
    }


def _config(summary: str, responses: Json, **extra: Any) -> Json:
    """A config API operation: bearer token, and its errors besides `responses`."""
    return {
        "summary": summary,
        "tags": ["config"],
        "security": BEARER,
        "responses": {**responses, **_errors(401, 429, 503)},
        **extra,
    }


def _get(summary: str, responses: Json) -> Json:
    return {"get": _operation(summary, "operations", responses)}


# --- the routes, by group -----------------------------------------------------------------------


def _hubspot_paths(action: Json, options: Json) -> Json:
    return {
        "/api/hubspot/action": _signed_post(
            "A workflow execution reaching the throttle step (HubSpot calls this).",
            "hubspot",
            action,
            {
                "200": _json(
                    _ref("ActionAnswer"),
                    "BLOCK (queued or duplicate), or the policy's overflow answer, or "
                    "FAIL_CONTINUE with throttle_reason (portal not installed, no policy).",
                ),
                **_errors(400, 401, 413, 429, 503),
            },
        ),
        "/api/hubspot/options": _signed_post(
            "The policy picker of the action's `policy` field (HubSpot calls this).",
            "hubspot",
            options,
            {"200": _json(_ref("OptionsAnswer"), "Policies."), **_errors(400, 401, 413, 429)},
        ),
    }


def _config_paths(policy: Json) -> Json:
    found = {"200": _json(policy, "The policy."), **_errors(400, 404)}
    in_force = "in force (the next execution on any pod is held by it)."
    saved = {
        "200": _json(policy, f"Replaced; {in_force}"),
        "201": _json(policy, f"Created; {in_force}"),
        "202": _json(
            policy,
            "Stored as a ThrottlePolicy (cluster mode) but not in force yet: the operator has "
            "not reconciled it within 10 s.",
        ),
        **_errors(400, 409, 413),
    }
    deleted = {
        "204": {"description": "Deleted; no pod routes executions to it any more."},
        "202": _json(
            _object({"status": {"const": "deleting"}, "detail": _string()}, ["status", "detail"]),
            "Deleted (cluster mode), but the operator has not retired it within 10 s.",
        ),
        **_errors(404, 400),
    }

    def one_policy(parameters: list[Json], get: str, put: str | None, delete: str) -> Json:
        item: Json = {"parameters": parameters, "get": _config(get, found)}
        if put is not None:
            item["put"] = _config(put, {**saved, **_errors(404)}, requestBody=_body(policy))
        item["delete"] = _config(delete, deleted)
        return item

    return {
        "/api/config": {
            "post": _config(
                "Create or replace a policy (name defaults to action-<id> or `default`).",
                saved,
                requestBody=_body(policy),
            ),
            "get": _config(
                "List policies.",
                {"200": _json(_ref("PolicyList"), "Policies."), **_errors(400)},
                parameters=[PORTAL_QUERY],
            ),
        },
        "/api/config/{portalId}/{actionId}": one_policy(
            [PORTAL, ACTION],
            "The portal's policy for one action.",
            None,
            "Delete the portal's policy for one action.",
        ),
        "/api/config/{portalId}/default": one_policy(
            [PORTAL],
            "The portal's default policy.",
            "Set the portal's default policy.",
            "Delete the portal's default policy.",
        ),
        "/api/config/{portalId}/policies/{name}": one_policy(
            [PORTAL, NAME],
            "One named policy.",
            "Create or replace one named policy.",
            "Delete one named policy.",
        ),
    }


def _operations_paths() -> Json:
    return {
        "/healthz": _get("The process answers.", {"200": _json(_ref("Health"), "Up.")}),
        "/readyz": _get(
            "Redis reachable, scripts loaded, policies loaded.",
            {
                "200": _json(_ref("Readiness"), "Ready."),
                "503": _json(_ref("Readiness"), "Not ready."),
            },
        ),
        "/metrics": _get(
            "Prometheus metrics.",
            {
                "200": {
                    "description": "Prometheus text format.",
                    "content": {"text/plain": {"schema": _string()}},
                }
            },
        ),
        "/api/openapi.json": _get(
            "This document.", {"200": _json({"type": "object"}, "OpenAPI 3.1 document.")}
        ),
    }


def _oauth_paths() -> Json:
    """The HubSpot install flow's routes (throttle/webhook_service/oauth.py)."""
    error_json = {"application/json": {"schema": _ref("Error")}}
    error_html_or_json = {"text/html": {"schema": _string()}, **error_json}
    not_configured = {"description": "Not configured.", "content": error_json}
    return {
        "/api/oauth/authorize": {
            "get": _operation(
                "Start the install: redirect to HubSpot's authorize page with a state.",
                "oauth",
                {"302": {"description": "Redirect to HubSpot."}, "503": not_configured},
            )
        },
        "/api/oauth/callback": {
            "get": _operation(
                "HubSpot's redirect back: check state, exchange the code, store tokens.",
                "oauth",
                {
                    "200": {
                        "description": "Installed (HTML, or JSON on request).",
                        "content": {
                            "text/html": {"schema": _string()},
                            "application/json": {"schema": {"type": "object"}},
                        },
                    },
                    "400": {
                        "description": "Bad or replayed state, denied, or bad code.",
                        "content": error_html_or_json,
                    },
                    "502": {"description": "HubSpot unavailable.", "content": error_html_or_json},
                    "503": not_configured,
                },
                parameters=[
                    {"name": n, "in": "query", "required": False, "schema": _string()}
                    for n in ("code", "state", "error", "error_description")
                ],
            )
        },
        "/api/hubspot/uninstall": _signed_post(
            "App uninstall events (signed like HubSpot's other calls).",
            "oauth",
            {"oneOf": [{"type": "array", "items": {"type": "object"}}, {"type": "object"}]},
            {
                "200": _json(
                    _object(
                        {
                            "uninstalled": {"type": "array", "items": {"type": "integer"}},
                            "ignoredAsOlderThanInstall": {
                                "type": "array",
                                "items": {"type": "integer"},
                            },
                        }
                    ),
                    "Portals marked uninstalled, and portals whose event (`occurredAt`, epoch "
                    "ms) predates their current install: a late retry, ignored.",
                ),
                **_errors(400, 401, 413, 503),
            },
        ),
    }


# --- the document -------------------------------------------------------------------------------


@functools.cache
def document() -> Json:
    components = dict(ANSWER_SCHEMAS)
    action = _schema(ActionRequest, components)
    options = _schema(OptionsRequest, components)
    policy = _schema(Policy, components)
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Throttle webhook service",
            "version": __version__,
            "description": "HubSpot custom workflow action that throttles workflow executions. "
            "Errors are JSON {error, detail, field?}.",
        },
        "paths": {
            **_hubspot_paths(action, options),
            **_config_paths(policy),
            **_operations_paths(),
            **_oauth_paths(),
        },
        "components": {
            "schemas": components,
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer", "description": "THROTTLE_API_TOKEN"}
            },
        },
    }


async def openapi(request: web.Request) -> web.Response:
    return web.json_response(document())


routes = [web.get("/api/openapi.json", openapi)]
