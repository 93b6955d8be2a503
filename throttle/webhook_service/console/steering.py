"""Pause and resume a queue from the console (operators only).

The change takes the config API's path: the webhook's config store (locally PostgreSQL + the one
`reconcile`; in a cluster a merge patch of the ThrottlePolicy's `spec.paused`, which the operator
reconciles), then the wait until it is in force (`config_api.in_force`). Then it is recorded in
PostgreSQL with who made it. The checks come first — the session's portal, its role, the form's
CSRF token — so a refused request changes nothing. Inline queues take their settings from the
workflow action's fields, so the console cannot pause them.
"""

from __future__ import annotations

import logging

from aiohttp import web

from throttle.engine.inline import PREFIX as INLINE_PREFIX
from throttle.history.console_changes import Change, record_change
from throttle.webhook_service.appkeys import CONFIG_STORE, DB_POOL
from throttle.webhook_service.config_api import in_force
from throttle.webhook_service.config_store import ConfigStoreUnavailable, PolicyRejected
from throttle.webhook_service.console.context import (
    PREFIX,
    ConsoleError,
    checked_form,
    console_of,
    session_for,
)
from throttle.webhook_service.console.pages import portal_id_of

log = logging.getLogger(__name__)


async def _steer(request: web.Request, change: Change) -> web.StreamResponse:
    portal_id = portal_id_of(request)
    session = session_for(request, portal_id, operator=True)
    await checked_form(request, session)
    name = request.match_info["name"]
    if name.startswith(INLINE_PREFIX):
        raise ConsoleError(
            409,
            "inline_queue",
            "an inline queue's settings live in the workflow action's fields: change them "
            "in HubSpot's workflow editor",
        )
    host = console_of(request).host
    try:
        policy = await host[CONFIG_STORE].set_paused(portal_id, name, change == "pause")
    except ConfigStoreUnavailable as exc:
        raise ConsoleError(503, "store_unavailable", str(exc)) from None
    except PolicyRejected as exc:
        raise ConsoleError(400, "invalid_policy", str(exc)) from None
    if policy is None:
        raise ConsoleError(
            404,
            "not_found",
            f"the config store has no policy {name!r} of portal {portal_id} (a policy from a "
            "manifest file is changed in that file)",
        )
    if not await in_force(host, policy):
        raise ConsoleError(
            503, "not_in_force", f"{change} stored, but not in force yet; reload in a moment"
        )
    try:
        await record_change(host[DB_POOL], portal_id, name, change, session.who)
    except Exception as exc:
        log.error("console: %s of %s:%s not recorded (%s)", change, portal_id, name, exc)
        raise ConsoleError(
            503, "not_recorded", f"{change} is in force, but could not be recorded"
        ) from None
    log.info("console: %s %sd queue %s of portal %s", session.who, change, name, portal_id)
    raise web.HTTPSeeOther(f"{PREFIX}/portals/{portal_id}/queues/{name}")


async def pause(request: web.Request) -> web.StreamResponse:
    return await _steer(request, "pause")


async def resume(request: web.Request) -> web.StreamResponse:
    return await _steer(request, "resume")


routes = [
    web.post(r"/portals/{portal_id:\d+}/queues/{name}/pause", pause),
    web.post(r"/portals/{portal_id:\d+}/queues/{name}/resume", resume),
]
