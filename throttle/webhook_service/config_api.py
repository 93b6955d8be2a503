"""The config API: policies over REST, for scripts and for users without `kubectl`.

Every route needs `Authorization: Bearer <THROTTLE_API_TOKEN>` (compared in constant time); a
missing or wrong token is a 401 that changes nothing. Bodies are the policy spec as JSON (the
same camelCase fields as a ThrottlePolicy's `spec`), validated with the engine's `Policy`, so a
bad body is a 400 naming the field. The store behind it is PostgreSQL + reconcile locally, or
ThrottlePolicy resources in a cluster (`throttle.webhook_service.config_store`).

A change is answered once it is in force: the policy's registry entry and rate parameters are
in Redis (written by the one `reconcile` — here in local mode, by the operator in a cluster) and
this pod's policy index has it, so the next execution sent to any pod is held by it (another
pod that has not reloaded yet looks at the registry before it answers "no policy"; see
`actions.py`). In a cluster the operator may be slow or down: after `IN_FORCE_TIMEOUT_S` the
answer is 202 — stored as a resource, not in force yet — instead of a 200/201 that would claim
more than is true.

Routes:
    POST   /api/config                                  create or replace (name from the body)
    GET    /api/config[?portalId=]                      list
    GET    /api/config/{portalId}/{actionId}            the policy of one action (the seed's)
    DELETE /api/config/{portalId}/{actionId}
    GET|PUT|DELETE /api/config/{portalId}/default       the portal's default policy
    GET|PUT|DELETE /api/config/{portalId}/policies/{name}
"""

from __future__ import annotations

import asyncio
import functools
import hmac
import json
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web
from redis.exceptions import RedisError

from throttle.engine import keys
from throttle.engine.manifests import ManifestError, policy_from_spec
from throttle.engine.policy import DEFAULT_POLICY_NAME, Policy
from throttle.engine.policy_index import registry_get
from throttle.webhook_service.appkeys import CONFIG_STORE, POLICY_INDEX, REDIS, SETTINGS
from throttle.webhook_service.config_store import (
    ActionAlreadyCovered,
    ConfigStoreUnavailable,
    PolicyRejected,
)
from throttle.webhook_service.errors import ErrorAnswer
from throttle.webhook_service.payloads import check_depth

log = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

MAX_ID = 2**53 - 1
"""Portal and action ids are JSON numbers; beyond 2^53 they cannot round-trip anyway."""
IN_FORCE_TIMEOUT_S = 10.0
"""How long a change may take to be in force before the answer says it is not yet (202)."""
IN_FORCE_POLL_S = 0.05


def require_token(request: web.Request) -> None:
    """401 unless the request carries the configured bearer token."""
    token = request.app[SETTINGS].throttle_api_token
    challenge = {"WWW-Authenticate": 'Bearer realm="throttle-config"'}
    if token is None or not token.get_secret_value():
        raise ErrorAnswer(
            401,
            "unauthorized",
            "the config API is disabled: THROTTLE_API_TOKEN is not set",
            headers=challenge,
        )
    header = request.headers.get("Authorization", "")
    scheme, _, given = header.partition(" ")
    if scheme.lower() != "bearer" or not given:
        raise ErrorAnswer(
            401,
            "unauthorized",
            "send Authorization: Bearer <THROTTLE_API_TOKEN>",
            headers=challenge,
        )
    # aiohttp keeps non-UTF-8 header bytes as surrogates; encode them back instead of failing.
    presented = given.strip().encode("utf-8", "surrogateescape")
    if not hmac.compare_digest(presented, token.get_secret_value().encode()):
        raise ErrorAnswer(401, "unauthorized", "the bearer token is not valid", headers=challenge)


def has_token(request: web.Request) -> bool:
    """`require_token` as a yes/no, for the failed-attempt limiter (the right token is never
    locked out)."""
    try:
        require_token(request)
    except ErrorAnswer:
        return False
    return True


def _id(text: str, field: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise ErrorAnswer(400, "invalid_parameter", f"{field} must be an integer", field) from None
    if not 0 <= value <= MAX_ID:
        raise ErrorAnswer(400, "invalid_parameter", f"{field} is out of range", field)
    return value


async def _body(request: web.Request) -> dict[str, Any]:
    raw = await request.read()
    check_depth(raw)
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ErrorAnswer(400, "invalid_json", f"body is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ErrorAnswer(
            400, "invalid_policy", "body must be a JSON object (the policy spec)", "body"
        )
    return data


def _validate(data: dict[str, Any]) -> Policy:
    """The engine's Policy plus the CRD's cross-field rules, so local mode refuses what a
    cluster's API server would."""
    if data.get("name") == DEFAULT_POLICY_NAME and data.get("actionId") is not None:
        raise ErrorAnswer(
            400, "invalid_policy", "actionId: a portal default applies to every action", "actionId"
        )
    spec = {k: v for k, v in data.items() if k != "name"}
    name = data.get("name")
    try:
        policy = policy_from_spec(name if isinstance(name, str) else None, spec, "body")
    except ManifestError as exc:
        field, message = exc.errors[0]
        field = field.removeprefix("spec.")
        raise ErrorAnswer(400, "invalid_policy", f"{field}: {message}", field) from None
    if policy.portal_id > MAX_ID:
        raise ErrorAnswer(400, "invalid_policy", "portalId: is out of range", "portalId")
    if policy.action_id is not None and policy.action_id > MAX_ID:
        raise ErrorAnswer(400, "invalid_policy", "actionId: is out of range", "actionId")
    return policy


def _same(data: dict[str, Any], key: str, value: Any) -> None:
    """A PUT's path decides identity; a body that disagrees is a mistake worth reporting."""
    if key in data and data[key] is not None and data[key] != value:
        raise ErrorAnswer(400, "invalid_policy", f"{key}: must match the URL ({value})", key)
    data[key] = value


def _answer(policy: Policy, status: int = 200) -> web.Response:
    return web.json_response(policy.spec(), status=status)


async def _in_redis(redis: Any, policy: Policy, present: bool) -> bool:
    """Whether Redis holds this policy in force (registry entry and rate parameters of this
    content), or — `present=False` — no longer routes to it (registry entry gone)."""
    entry = await registry_get(redis, policy.key)
    if not present:
        return entry is None
    if entry is None or entry[1].content_hash != policy.content_hash:
        return False
    params_hash = await redis.hget(keys.params(policy.key), "hash")
    return params_hash is not None and params_hash.decode() == policy.content_hash


async def in_force(app: web.Application, policy: Policy, present: bool = True) -> bool:
    """Wait until the change is in force in Redis (see `_in_redis`), then bring this pod's
    policy index up to date; False if Redis did not show it within `IN_FORCE_TIMEOUT_S`
    (the operator has not reconciled it yet, or Redis does not answer)."""
    redis = app[REDIS]
    deadline = time.monotonic() + IN_FORCE_TIMEOUT_S
    while True:
        try:
            if await _in_redis(redis, policy, present):
                break
        except (RedisError, OSError) as exc:
            log.debug("policy %s: Redis unavailable (%s)", policy.key, type(exc).__name__)
        if time.monotonic() >= deadline:
            return False
        await asyncio.sleep(IN_FORCE_POLL_S)
    try:
        await app[POLICY_INDEX].refresh_since()
    except (RedisError, OSError):
        return False
    return True


def _not_in_force(policy: Policy, change: str) -> str:
    """Log, and return for the answer, why a change is not in force yet."""
    text = (
        f"policy {policy.key} {change}, but not in force within "
        f"{IN_FORCE_TIMEOUT_S:.0f} s: the operator has not reconciled it yet (see the "
        "ThrottlePolicy's status and the operator's log)"
    )
    log.warning("%s", text)
    return text


async def _put(request: web.Request, policy: Policy) -> web.Response:
    store = request.app[CONFIG_STORE]
    try:
        result = await store.put(policy)
    except ActionAlreadyCovered as exc:
        raise ErrorAnswer(409, "conflict", str(exc), "actionId") from None
    change = "created" if result.created else "updated"
    log.info("policy %s %s:%s via config API", change, policy.portal_id, policy.name)
    if not await in_force(request.app, result.policy):
        _not_in_force(result.policy, change)
        return _answer(result.policy, 202)
    return _answer(result.policy, 201 if result.created else 200)


async def _deleted(request: web.Request, policy: Policy) -> web.Response:
    """204 once the deletion is in force (the policy no longer takes executions), else 202."""
    if not await in_force(request.app, policy, present=False):
        detail = _not_in_force(policy, "deleted")
        return web.json_response({"status": "deleting", "detail": detail}, status=202)
    return web.Response(status=204)


async def create_or_replace(request: web.Request) -> web.Response:
    require_token(request)
    data = await _body(request)
    if not data.get("name"):
        # Convenience: one policy per action, or the portal default, need no invented name.
        action = data.get("actionId")
        data["name"] = f"action-{action}" if isinstance(action, int) else DEFAULT_POLICY_NAME
    return await _put(request, _validate(data))


async def list_policies(request: web.Request) -> web.Response:
    require_token(request)
    portal = request.query.get("portalId")
    portal_id = _id(portal, "portalId") if portal is not None else None
    policies = await request.app[CONFIG_STORE].list(portal_id)
    return web.json_response({"policies": [p.spec() for p in policies]})


async def _by_action(request: web.Request) -> Policy:
    portal_id = _id(request.match_info["portal_id"], "portalId")
    action_id = _id(request.match_info["action_id"], "actionId")
    policy = await request.app[CONFIG_STORE].find(portal_id, action_id)
    if policy is None:
        raise ErrorAnswer(
            404, "not_found", f"portal {portal_id} has no policy for action {action_id}"
        )
    return policy


async def get_for_action(request: web.Request) -> web.Response:
    require_token(request)
    return _answer(await _by_action(request))


async def delete_for_action(request: web.Request) -> web.Response:
    require_token(request)
    policy = await _by_action(request)
    await request.app[CONFIG_STORE].delete(policy.portal_id, policy.name)
    return await _deleted(request, policy)


def _named(request: web.Request) -> tuple[int, str]:
    portal_id = _id(request.match_info["portal_id"], "portalId")
    return portal_id, request.match_info.get("name", DEFAULT_POLICY_NAME)


async def get_named(request: web.Request) -> web.Response:
    require_token(request)
    portal_id, name = _named(request)
    policy = await request.app[CONFIG_STORE].get(portal_id, name)
    if policy is None:
        raise ErrorAnswer(404, "not_found", f"portal {portal_id} has no policy named {name!r}")
    return _answer(policy)


async def put_named(request: web.Request) -> web.Response:
    require_token(request)
    portal_id, name = _named(request)
    data = await _body(request)
    _same(data, "portalId", portal_id)
    _same(data, "name", name)
    return await _put(request, _validate(data))


async def delete_named(request: web.Request) -> web.Response:
    require_token(request)
    portal_id, name = _named(request)
    store = request.app[CONFIG_STORE]
    policy = await store.get(portal_id, name)
    if policy is None or not await store.delete(portal_id, name):
        raise ErrorAnswer(404, "not_found", f"portal {portal_id} has no policy named {name!r}")
    return await _deleted(request, policy)


def store_errors(handler: Handler) -> Handler:
    """Map the store's failures to JSON answers. A wrapper on the config routes only, not an
    app middleware: the action endpoint's hot path should not pay for it."""

    @functools.wraps(handler)
    async def wrapped(request: web.Request) -> web.StreamResponse:
        try:
            return await handler(request)
        except ConfigStoreUnavailable as exc:
            raise ErrorAnswer(
                503, "store_unavailable", str(exc), headers={"Retry-After": "5"}
            ) from None
        except PolicyRejected as exc:
            raise ErrorAnswer(400, "invalid_policy", str(exc)) from None

    return wrapped


_PORTAL = r"{portal_id:\d{1,16}}"
_ACTION = r"{action_id:\d{1,16}}"

routes = [
    web.post("/api/config", store_errors(create_or_replace)),
    web.get("/api/config", store_errors(list_policies)),
    web.get(f"/api/config/{_PORTAL}/default", store_errors(get_named)),
    web.put(f"/api/config/{_PORTAL}/default", store_errors(put_named)),
    web.delete(f"/api/config/{_PORTAL}/default", store_errors(delete_named)),
    web.get(f"/api/config/{_PORTAL}/policies/{{name}}", store_errors(get_named)),
    web.put(f"/api/config/{_PORTAL}/policies/{{name}}", store_errors(put_named)),
    web.delete(f"/api/config/{_PORTAL}/policies/{{name}}", store_errors(delete_named)),
    web.get(f"/api/config/{_PORTAL}/{_ACTION}", store_errors(get_for_action)),
    web.delete(f"/api/config/{_PORTAL}/{_ACTION}", store_errors(delete_for_action)),
]
