"""The simulated HubSpot over HTTP: OAuth, introspection, action definitions, callback completion,
per-portal rate limits, and an admin API under `/_sim` for tests, the demo and benchmarks.

`create_simulator_app(config)` is the factory; the `Simulator` it drives is at `app[SIMULATOR]`.
Admin API (JSON):
- `GET /_sim/report` (`?format=text` for the table), `GET /_sim/completions?portalId=`
- `GET|POST /_sim/faults` (partial update; `storm_seconds` starts a 429 storm now,
  `reject_client_secret_seconds` refuses the app's client secret at the token endpoint for a while)
- `POST /_sim/portals` `{portalId, scopes?}` → tokens, as if the portal had installed the app
- `POST /_sim/revoke` `{portalId, accessTokens?}` → revokes the portal's refresh tokens
- `POST /_sim/callbacks` `{callbacks:[{callbackId, portalId, expiresInSeconds?}]}` → blocked
- `POST /_sim/expire` `{callbackIds:[...]}`, `POST /_sim/reset`
- `POST /_sim/drive` (a `TrafficPlan` as JSON, plus `actionUrl` and optionally `signUrl`, the URL
  signatures cover when it is not `actionUrl`) → runs the driver, its result
- `POST /_sim/uninstall` `{portalId, webhookUrl}` → revokes tokens, sends the signed event
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import urlencode

from aiohttp import web
from aiohttp.abc import AbstractAccessLogger

from throttle_dev.simulator.driver import Driver, TrafficPlan, send_uninstall
from throttle_dev.simulator.portal_report import build_report, format_report
from throttle_dev.simulator.state import (
    ApiError,
    Faults,
    Simulator,
    SimulatorConfig,
    error_body,
)

log = logging.getLogger(__name__)

SIMULATOR = web.AppKey("simulator", Simulator)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def create_simulator_app(
    config: SimulatorConfig | None = None, simulator: Simulator | None = None
) -> web.Application:
    """An aiohttp app playing HubSpot for one app; pass `simulator` to share state with a driver."""
    app = web.Application(middlewares=[_errors])
    app[SIMULATOR] = simulator or Simulator(config)
    app.add_routes(_routes())
    return app


def _sim(request: web.Request) -> Simulator:
    return request.app[SIMULATOR]


@web.middleware
async def _errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Turn ApiError into HubSpot-shaped answers; add the injected latency to API calls."""
    sim = _sim(request)
    if not request.path.startswith("/_sim") and sim.faults.latency_ms > 0:
        await asyncio.sleep(sim.faults.latency_ms / 1000)
    try:
        return await handler(request)
    except ApiError as exc:
        return web.json_response(exc.body, status=exc.status, headers=exc.headers)
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        if not request.path.startswith("/_sim"):
            raise
        # An admin call with a missing or mistyped field.
        detail = f"bad request body: {type(exc).__name__} {exc}"
        return web.json_response(error_body("VALIDATION_ERROR", detail), status=400)


async def _json(request: web.Request) -> Any:
    try:
        return await request.json()
    except ValueError:
        raise ApiError(400, error_body("VALIDATION_ERROR", "body is not valid JSON")) from None


# --- OAuth --------------------------------------------------------------------------------------
async def authorize(request: web.Request) -> web.StreamResponse:
    """Approve at once and redirect back with a code (or the error HubSpot would send).

    Simulator-only query parameters: `portal_id` (which account installs), `user_email` (who
    authorizes: introspection's `user`) and `deny=1`.
    """
    query = request.query
    redirect_uri = query.get("redirect_uri", "")
    state = query.get("state")
    if query.get("deny") == "1" and redirect_uri:
        params = {"error": "access_denied", "error_description": "The user denied access"}
        if state is not None:
            params["state"] = state
        raise web.HTTPFound(f"{redirect_uri}?{urlencode(params)}")
    try:
        portal_id = int(query["portal_id"]) if "portal_id" in query else None
    except ValueError:
        raise ApiError(400, error_body("VALIDATION_ERROR", "portal_id must be a number")) from None
    code = _sim(request).authorize(
        query.get("client_id", ""),
        redirect_uri,
        query.get("scope", ""),
        portal_id,
        query.get("user_email"),
    )
    params = {"code": code}
    if state is not None:
        params["state"] = state
    raise web.HTTPFound(f"{redirect_uri}?{urlencode(params)}")


async def token(request: web.Request) -> web.StreamResponse:
    if request.content_type != "application/x-www-form-urlencoded":
        raise ApiError(
            400,
            error_body("VALIDATION_ERROR", "the token endpoint takes a form-encoded body"),
        )
    form = {k: str(v) for k, v in (await request.post()).items()}
    sim = _sim(request)
    try:
        answer = sim.token(form)
    finally:
        if sim.faults.token_answer_delay_ms > 0:  # handled (a refresh token rotated): answer late
            await asyncio.sleep(sim.faults.token_answer_delay_ms / 1000)
    return web.json_response(answer)


async def introspect(request: web.Request) -> web.StreamResponse:
    return web.json_response(_sim(request).introspect(request.match_info["token"]))


async def refresh_token_info(request: web.Request) -> web.StreamResponse:
    return web.json_response(_sim(request).refresh_token_info(request.match_info["token"]))


async def revoke_refresh_token(request: web.Request) -> web.StreamResponse:
    _sim(request).revoke_refresh_token(request.match_info["token"])
    return web.Response(status=204)


# --- callback completion ------------------------------------------------------------------------
async def _completion(
    request: web.Request,
    apply: Callable[[Simulator, int, Any], None],
    named: Callable[[Any], list[Any]],
) -> web.StreamResponse:
    """Handle a completion call at once; answer it `completion_answer_delay_ms` later."""
    sim = _sim(request)
    try:
        body = await request.json()
    except ValueError:
        body = None
    sim.note_completion_request(named(body))
    try:
        response = await _apply_completion(request, sim, apply)
    except ApiError:
        await _answer_delay(sim)
        raise
    await _answer_delay(sim)
    return response


async def _answer_delay(sim: Simulator) -> None:
    if sim.faults.completion_answer_delay_ms > 0:
        await asyncio.sleep(sim.faults.completion_answer_delay_ms / 1000)


def _batch_ids(body: Any) -> list[Any]:
    inputs = body.get("inputs") if isinstance(body, dict) else None
    if not isinstance(inputs, list):
        return []
    return [entry.get("callbackId") for entry in inputs if isinstance(entry, dict)]


async def _apply_completion(
    request: web.Request, sim: Simulator, apply: Callable[[Simulator, int, Any], None]
) -> web.StreamResponse:
    access = sim.authenticate(request.headers.get("Authorization"))
    if "automation" not in access.scopes:
        raise ApiError(403, error_body("MISSING_SCOPES", "this call needs the automation scope"))
    headers = sim.admit(access.portal_id, completion=True)
    try:
        sim.maybe_fail(access.portal_id)
        apply(sim, access.portal_id, await _json(request))
    except ApiError as exc:
        exc.headers = {**headers, **exc.headers}
        raise
    if sim.faults.error_after_apply_ratio > 0 and (
        sim.random.random() < sim.faults.error_after_apply_ratio
    ):
        sim.portal(access.portal_id).server_errors += 1
        raise ApiError(
            sim.faults.error_status,
            error_body("INTERNAL_ERROR", "internal error after applying (injected)"),
            headers,
        )
    return web.Response(status=204, headers=headers)


async def complete_batch(request: web.Request) -> web.StreamResponse:
    return await _completion(
        request, lambda sim, portal, body: sim.complete_batch(portal, body), _batch_ids
    )


async def complete_one(request: web.Request) -> web.StreamResponse:
    callback_id = request.match_info["callback_id"]
    return await _completion(
        request,
        lambda sim, portal, body: sim.complete_one(portal, callback_id, body),
        lambda _body: [callback_id],
    )


# --- action definitions -------------------------------------------------------------------------
def _app_id(request: web.Request) -> int:
    try:
        app_id = int(request.match_info["app_id"])
    except ValueError:
        raise ApiError(404, error_body("OBJECT_NOT_FOUND", "app not found")) from None
    _sim(request).check_developer(app_id, request.query.get("hapikey"))
    return app_id


async def list_definitions(request: web.Request) -> web.StreamResponse:
    app_id = _app_id(request)
    try:
        limit = max(1, min(int(request.query.get("limit", "10")), 100))
    except ValueError:
        raise ApiError(400, error_body("VALIDATION_ERROR", "limit must be a number")) from None
    return web.json_response(
        _sim(request).list_definitions(app_id, limit, request.query.get("after"))
    )


async def create_definition(request: web.Request) -> web.StreamResponse:
    app_id = _app_id(request)
    created = _sim(request).create_definition(app_id, await _json(request))
    return web.json_response(created, status=201)


async def get_definition(request: web.Request) -> web.StreamResponse:
    app_id = _app_id(request)
    return web.json_response(
        _sim(request).get_definition(app_id, request.match_info["definition_id"])
    )


async def update_definition(request: web.Request) -> web.StreamResponse:
    app_id = _app_id(request)
    updated = _sim(request).update_definition(
        app_id, request.match_info["definition_id"], await _json(request)
    )
    return web.json_response(updated)


async def archive_definition(request: web.Request) -> web.StreamResponse:
    app_id = _app_id(request)
    _sim(request).archive_definition(app_id, request.match_info["definition_id"])
    return web.Response(status=204)


# --- admin API ----------------------------------------------------------------------------------
async def admin_report(request: web.Request) -> web.StreamResponse:
    report = build_report(_sim(request))
    if request.query.get("format") == "text":
        return web.Response(text=format_report(report))
    return web.json_response(report.as_dict())


async def admin_completions(request: web.Request) -> web.StreamResponse:
    portal = request.query.get("portalId")
    rows = [
        {
            "callbackId": c.callback_id,
            "portalId": c.portal_id,
            "at": c.at,
            "via": c.via,
            "request": c.request,
            "outputFields": c.output_fields,
        }
        for c in _sim(request).completions
        if portal is None or str(c.portal_id) == portal
    ]
    return web.json_response({"completions": rows})


async def admin_faults(request: web.Request) -> web.StreamResponse:
    sim = _sim(request)
    if request.method == "POST":
        changes = await _json(request)
        if not isinstance(changes, dict):
            raise ApiError(400, error_body("VALIDATION_ERROR", "body must be an object"))
        try:
            sim.set_faults(**changes)
        except (ValueError, TypeError) as exc:
            raise ApiError(400, error_body("VALIDATION_ERROR", str(exc))) from None
    return web.json_response(sim.snapshot()["faults"])


def _portal_id(body: Any) -> int:
    try:
        return int(body["portalId"])
    except (KeyError, TypeError, ValueError):
        raise ApiError(
            400, error_body("VALIDATION_ERROR", "portalId is required", field="portalId")
        ) from None


async def admin_portals(request: web.Request) -> web.StreamResponse:
    body = await _json(request)
    grant = _sim(request).issue_tokens(_portal_id(body), body.get("scopes"))
    return web.json_response(grant, status=201)


async def admin_revoke(request: web.Request) -> web.StreamResponse:
    body = await _json(request)
    count = _sim(request).revoke(_portal_id(body), bool(body.get("accessTokens", False)))
    return web.json_response({"revoked": count})


async def admin_callbacks(request: web.Request) -> web.StreamResponse:
    body = await _json(request)
    sim = _sim(request)
    rows = body.get("callbacks") if isinstance(body, dict) else None
    if not isinstance(rows, list):
        raise ApiError(400, error_body("VALIDATION_ERROR", "callbacks must be a list"))
    for row in rows:
        sim.add_blocked(
            str(row["callbackId"]),
            _portal_id(row),
            float(row.get("expiresInSeconds", 7 * 24 * 3600)),
            int(row.get("actionDefinitionId", 1)),
        )
    return web.json_response({"registered": len(rows)}, status=201)


async def admin_expire(request: web.Request) -> web.StreamResponse:
    body = await _json(request)
    return web.json_response({"expired": _sim(request).expire(body.get("callbackIds", []))})


async def admin_reset(request: web.Request) -> web.StreamResponse:
    _sim(request).reset()
    return web.json_response({"reset": True})


async def admin_drive(request: web.Request) -> web.StreamResponse:

    body = await _json(request)
    try:
        action_url = str(body.pop("actionUrl"))
        sign_url = body.pop("signUrl", None)
        plan = TrafficPlan.from_dict(body)
    except (KeyError, TypeError, ValueError) as exc:
        raise ApiError(400, error_body("VALIDATION_ERROR", f"bad plan: {exc}")) from None
    async with Driver(_sim(request), action_url, sign_url=sign_url and str(sign_url)) as driver:
        result = await driver.run(plan)
    return web.json_response(result.as_dict())


async def admin_uninstall(request: web.Request) -> web.StreamResponse:

    body = await _json(request)
    portal_id = _portal_id(body)
    webhook_url = str(body["webhookUrl"])
    sim = _sim(request)
    sim.revoke(portal_id, access_tokens=True)
    status = await send_uninstall(sim, webhook_url, portal_id)
    return web.json_response({"revoked": True, "webhookStatus": status})


def _routes() -> list[web.RouteDef]:
    defs = "/automation/v4/actions/{app_id:\\d+}"
    return [
        web.get("/oauth/authorize", authorize),
        web.get("/oauth/v1/authorize", authorize),
        web.post("/oauth/v1/token", token),
        web.get("/oauth/v1/access-tokens/{token}", introspect),
        web.get("/oauth/v1/refresh-tokens/{token}", refresh_token_info),
        web.delete("/oauth/v1/refresh-tokens/{token}", revoke_refresh_token),
        web.post("/automation/v4/actions/callbacks/complete", complete_batch),
        web.post("/automation/v4/actions/callbacks/{callback_id}/complete", complete_one),
        web.get(defs, list_definitions),
        web.post(defs, create_definition),
        web.get(defs + "/{definition_id}", get_definition),
        web.patch(defs + "/{definition_id}", update_definition),
        web.delete(defs + "/{definition_id}", archive_definition),
        web.get("/_sim/report", admin_report),
        web.get("/_sim/completions", admin_completions),
        web.get("/_sim/faults", admin_faults),
        web.post("/_sim/faults", admin_faults),
        web.post("/_sim/portals", admin_portals),
        web.post("/_sim/revoke", admin_revoke),
        web.post("/_sim/callbacks", admin_callbacks),
        web.post("/_sim/expire", admin_expire),
        web.post("/_sim/reset", admin_reset),
        web.post("/_sim/drive", admin_drive),
        web.post("/_sim/uninstall", admin_uninstall),
    ]


class SimAccessLogger(AbstractAccessLogger):
    """Method, route template and status: paths and queries carry codes and tokens."""

    def log(self, request: web.BaseRequest, response: web.StreamResponse, time: float) -> None:
        match_info = getattr(request, "match_info", None)
        resource = match_info.route.resource if match_info is not None else None
        path = resource.canonical if resource is not None else "(unmatched)"
        self.logger.info("%s %s %s %.1fms", request.method, path, response.status, time * 1000)


ACCESS_LOG: dict[str, Any] = {"access_log_class": SimAccessLogger}
"""Runner keyword arguments for a simulator server (tests pass them to aiohttp_server)."""


async def serve(
    config: SimulatorConfig,
    host: str = "127.0.0.1",
    port: int = 8090,
    faults: Faults | None = None,
) -> None:
    """Run until cancelled (the CLI wraps this in asyncio.run)."""
    runner = web.AppRunner(create_simulator_app(simulator=Simulator(config, faults)), **ACCESS_LOG)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    log.info("HubSpot simulator listening on http://%s:%s", host, port)
    try:
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()
