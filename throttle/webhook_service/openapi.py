"""`GET /api/openapi.json`: every endpoint of the webhook service, its bodies and its errors.

Written by hand (the routes are few) from the same pydantic models the handlers validate with,
so the request schemas cannot drift from the code; schemathesis replays it against the app in
tests/webhook/test_openapi.py and fails on any status or body the document does not list.
"""

from __future__ import annotations

import copy
import functools
from typing import Any

from aiohttp import web
from pydantic import BaseModel

from throttle import __version__
from throttle.engine.policy import Policy
from throttle.webhook_service.payloads import ActionRequest, OptionsRequest

REF = "#/components/schemas/{model}"


def _schema(model: type[BaseModel], components: dict[str, Any]) -> dict[str, Any]:
    schema = model.model_json_schema(by_alias=True, ref_template=REF)
    for name, definition in schema.pop("$defs", {}).items():
        components[name] = definition
    components[model.__name__] = schema
    return {"$ref": REF.format(model=model.__name__)}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


ERROR = {"$ref": REF.format(model="Error")}


def _error(description: str) -> dict[str, Any]:
    return _json(ERROR, description)


def _errors(*codes: int) -> dict[str, Any]:
    text = {
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
    return {str(code): _error(text[code]) for code in codes}


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

PORTAL = {
    "name": "portalId",
    "in": "path",
    "required": True,
    "schema": {"type": "string", "pattern": "^[0-9]{1,16}$"},
}
ACTION = {
    "name": "actionId",
    "in": "path",
    "required": True,
    "schema": {"type": "string", "pattern": "^[0-9]{1,16}$"},
}
NAME = {"name": "name", "in": "path", "required": True, "schema": {"type": "string"}}


@functools.cache
def document() -> dict[str, Any]:
    components: dict[str, Any] = {
        "Error": {
            "type": "object",
            "required": ["error", "detail"],
            "properties": {
                "error": {"type": "string", "description": "Machine-readable code."},
                "detail": {"type": "string", "description": "What went wrong, for people."},
                "field": {"type": "string", "description": "Dotted path of the bad field."},
            },
        },
        "ActionAnswer": {
            "type": "object",
            "required": ["outputFields"],
            "properties": {
                "outputFields": {
                    "type": "object",
                    "required": ["hs_execution_state"],
                    "properties": {
                        "hs_execution_state": {
                            "type": "string",
                            "enum": ["BLOCK", "SUCCESS", "FAIL_CONTINUE"],
                        },
                        "hs_expiration_duration": {
                            "type": "string",
                            "description": "ISO-8601 duration (with BLOCK).",
                        },
                        "throttle_status": {"type": "string", "enum": ["passed", "failed"]},
                        "throttle_policy": {"type": "string"},
                        "throttle_reason": {"type": "string"},
                        "throttle_wait_seconds": {"type": "number"},
                    },
                }
            },
        },
        "OptionsAnswer": {
            "type": "object",
            "required": ["options"],
            "properties": {
                "options": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "required": ["label", "value"],
                        "properties": {
                            "label": {"type": "string"},
                            "value": {"type": "string"},
                            "description": {"type": "string"},
                        },
                    },
                },
                "after": {"type": "string"},
                "searchable": {"type": "boolean"},
            },
        },
        "PolicyList": {
            "type": "object",
            "required": ["policies"],
            "properties": {
                "policies": {"type": "array", "items": {"$ref": REF.format(model="Policy")}}
            },
        },
        "Health": {"type": "object", "properties": {"status": {"type": "string"}}},
        "Readiness": {
            "type": "object",
            "required": ["status", "checks"],
            "properties": {
                "status": {"type": "string", "enum": ["ready", "not ready"]},
                "checks": {"type": "object", "additionalProperties": {"type": "string"}},
                "faults": {
                    "type": "object",
                    "additionalProperties": {"type": "string"},
                    "description": "What stops completions outside this pod (e.g. "
                    "hubspot_config: HubSpot refuses the app's client secret); not a readiness "
                    "failure.",
                },
            },
        },
    }
    action = _schema(ActionRequest, components)
    options = _schema(OptionsRequest, components)
    policy = _schema(Policy, components)
    policy_body = {"required": True, "content": {"application/json": {"schema": policy}}}
    bearer: list[dict[str, list[str]]] = [{"bearer": []}]

    def config(summary: str, responses: dict[str, Any], **extra: Any) -> dict[str, Any]:
        return {
            "summary": summary,
            "tags": ["config"],
            "security": bearer,
            "responses": {**responses, **_errors(401, 429, 503)},
            **extra,
        }

    ok_policy = {"200": _json(policy, "The policy.")}
    saved = {
        "200": _json(policy, "Replaced; in force (the next execution on any pod is held by it)."),
        "201": _json(policy, "Created; in force (the next execution on any pod is held by it)."),
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
            {
                "type": "object",
                "required": ["status", "detail"],
                "properties": {"status": {"const": "deleting"}, "detail": {"type": "string"}},
            },
            "Deleted (cluster mode), but the operator has not retired it within 10 s.",
        ),
        **_errors(404),
    }
    paths: dict[str, Any] = {
        "/api/hubspot/action": {
            "post": {
                "summary": "A workflow execution reaching the throttle step (HubSpot calls this).",
                "tags": ["hubspot"],
                "parameters": SIGNATURE_HEADERS,
                "requestBody": {
                    "required": True,
                    "content": {"application/json": {"schema": action}},
                },
                "responses": {
                    "200": _json(
                        {"$ref": REF.format(model="ActionAnswer")},
                        "BLOCK (queued or duplicate), or the policy's overflow answer, or "
                        "FAIL_CONTINUE with throttle_reason (portal not installed, no policy).",
                    ),
                    **_errors(400, 401, 413, 429, 503),
                },
            }
        },
        "/api/hubspot/options": {
            "post": {
                "summary": "The policy picker of the action's `policy` field (HubSpot calls this).",
                "tags": ["hubspot"],
                "parameters": SIGNATURE_HEADERS,
                "requestBody": {
                    "required": True,
                    "content": {"application/json": {"schema": options}},
                },
                "responses": {
                    "200": _json({"$ref": REF.format(model="OptionsAnswer")}, "Policies."),
                    **_errors(400, 401, 413, 429),
                },
            }
        },
        "/api/config": {
            "post": config(
                "Create or replace a policy (name defaults to action-<id> or `default`).",
                saved,
                requestBody=policy_body,
            ),
            "get": config(
                "List policies.",
                {
                    "200": _json({"$ref": REF.format(model="PolicyList")}, "Policies."),
                    **_errors(400),
                },
                parameters=[
                    {
                        "name": "portalId",
                        "in": "query",
                        "required": False,
                        "schema": {"type": "integer", "minimum": 0},
                    }
                ],
            ),
        },
        "/api/config/{portalId}/{actionId}": {
            "parameters": [PORTAL, ACTION],
            "get": config(
                "The portal's policy for one action.", {**ok_policy, **_errors(400, 404)}
            ),
            "delete": config(
                "Delete the portal's policy for one action.", {**deleted, **_errors(400)}
            ),
        },
        "/api/config/{portalId}/default": {
            "parameters": [PORTAL],
            "get": config("The portal's default policy.", {**ok_policy, **_errors(400, 404)}),
            "put": config(
                "Set the portal's default policy.",
                {**saved, **_errors(404)},
                requestBody=policy_body,
            ),
            "delete": config("Delete the portal's default policy.", {**deleted, **_errors(400)}),
        },
        "/api/config/{portalId}/policies/{name}": {
            "parameters": [PORTAL, NAME],
            "get": config("One named policy.", {**ok_policy, **_errors(400, 404)}),
            "put": config(
                "Create or replace one named policy.",
                {**saved, **_errors(404)},
                requestBody=policy_body,
            ),
            "delete": config("Delete one named policy.", {**deleted, **_errors(400)}),
        },
        "/healthz": {
            "get": {
                "summary": "The process answers.",
                "tags": ["operations"],
                "responses": {"200": _json({"$ref": REF.format(model="Health")}, "Up.")},
            }
        },
        "/readyz": {
            "get": {
                "summary": "Redis reachable, scripts loaded, policies loaded.",
                "tags": ["operations"],
                "responses": {
                    "200": _json({"$ref": REF.format(model="Readiness")}, "Ready."),
                    "503": _json({"$ref": REF.format(model="Readiness")}, "Not ready."),
                },
            }
        },
        "/metrics": {
            "get": {
                "summary": "Prometheus metrics.",
                "tags": ["operations"],
                "responses": {
                    "200": {
                        "description": "Prometheus text format.",
                        "content": {"text/plain": {"schema": {"type": "string"}}},
                    }
                },
            }
        },
        "/api/openapi.json": {
            "get": {
                "summary": "This document.",
                "tags": ["operations"],
                "responses": {
                    "200": _json({"type": "object"}, "OpenAPI 3.1 document."),
                },
            }
        },
    }
    paths.update(copy.deepcopy(OAUTH_PATHS))
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Throttle webhook service",
            "version": __version__,
            "description": "HubSpot custom workflow action that throttles workflow executions. "
            "Errors are JSON {error, detail, field?}.",
        },
        "paths": paths,
        "components": {
            "schemas": components,
            "securitySchemes": {
                "bearer": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "THROTTLE_API_TOKEN",
                }
            },
        },
    }


_HTML_OR_JSON = {
    "text/html": {"schema": {"type": "string"}},
    "application/json": {"schema": {"type": "object"}},
}
_ERROR_JSON = {"application/json": {"schema": ERROR}}
_ERROR_HTML_OR_JSON = {"text/html": {"schema": {"type": "string"}}, **_ERROR_JSON}

OAUTH_PATHS: dict[str, Any] = {
    "/api/oauth/authorize": {
        "get": {
            "summary": "Start the install: redirect to HubSpot's authorize page with a state.",
            "tags": ["oauth"],
            "responses": {
                "302": {"description": "Redirect to HubSpot."},
                "503": {"description": "Not configured.", "content": _ERROR_JSON},
            },
        }
    },
    "/api/oauth/callback": {
        "get": {
            "summary": "HubSpot's redirect back: check state, exchange the code, store tokens.",
            "tags": ["oauth"],
            "parameters": [
                {"name": n, "in": "query", "required": False, "schema": {"type": "string"}}
                for n in ("code", "state", "error", "error_description")
            ],
            "responses": {
                "200": {
                    "description": "Installed (HTML, or JSON on request).",
                    "content": _HTML_OR_JSON,
                },
                "400": {
                    "description": "Bad or replayed state, denied, or bad code.",
                    "content": _ERROR_HTML_OR_JSON,
                },
                "502": {"description": "HubSpot unavailable.", "content": _ERROR_HTML_OR_JSON},
                "503": {"description": "Not configured.", "content": _ERROR_JSON},
            },
        }
    },
    "/api/hubspot/uninstall": {
        "post": {
            "summary": "App uninstall events (signed like HubSpot's other calls).",
            "tags": ["oauth"],
            "parameters": SIGNATURE_HEADERS,
            "requestBody": {
                "required": True,
                "content": {
                    "application/json": {
                        "schema": {
                            "oneOf": [
                                {"type": "array", "items": {"type": "object"}},
                                {"type": "object"},
                            ]
                        }
                    }
                },
            },
            "responses": {
                "200": _json(
                    {
                        "type": "object",
                        "properties": {
                            "uninstalled": {"type": "array", "items": {"type": "integer"}}
                        },
                    },
                    "Portals marked uninstalled.",
                ),
                **_errors(400, 401, 413, 503),
            },
        }
    },
}
"""The HubSpot install flow's routes (throttle/webhook_service/oauth.py)."""


async def openapi(request: web.Request) -> web.Response:
    return web.json_response(document())


routes = [web.get("/api/openapi.json", openapi)]
