"""The console's pages for one portal: its queues, one queue, and the lookup of one execution.

Every handler first checks that the session belongs to the portal in the URL (403 otherwise),
then reads: figures from Redis (the same rows `throttle status --json` prints), history from
PostgreSQL. History being unreachable leaves its part of a page saying so; the figures, which
need only Redis, still show.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable
from datetime import UTC, datetime
from typing import Any, TypeVar

from aiohttp import web

from throttle.engine.inline import PREFIX as INLINE_PREFIX
from throttle.engine.policy import Policy
from throttle.history.console_changes import recent_changes
from throttle.history.timeline import lookup, recent_failures, releases_per_minute
from throttle.webhook_service.appkeys import CONFIG_STORE, DB_POOL
from throttle.webhook_service.config_store import ConfigStoreUnavailable
from throttle.webhook_service.console.chart import releases_chart
from throttle.webhook_service.console.context import (
    ConsoleError,
    console_of,
    reader,
    render,
    session_for,
)
from throttle.webhook_service.console.figures import portal_queues

log = logging.getLogger(__name__)

T = TypeVar("T")
FIELDS = ("rate", "state", "queued", "in_flight", "oldest_wait_s", "drain_s", "released_today")
"""The overview's columns, as `td[data-field]` and as keys of `queues.json`'s rows."""
MAX_QUERY = 200


def portal_id_of(request: web.Request) -> int:
    text = request.match_info["portal_id"]
    if not text.isdigit() or len(text) > 16:
        raise ConsoleError(404, "not_found", "no such portal")
    return int(text)


async def from_history(request: web.Request, read: Awaitable[T]) -> T | None:
    """What PostgreSQL answers, or None (the page says history is unavailable)."""
    try:
        return await read
    except Exception as exc:  # PostgreSQL down, not migrated: the rest of the page still shows
        log.warning("console: history unavailable (%s)", type(exc).__name__)
        return None


def _pool(request: web.Request) -> Any:
    pool = console_of(request).host[DB_POOL]
    if pool is None:
        raise ConsoleError(503, "not_configured", "DATABASE_URL is not set: no history")
    return pool


async def overview(request: web.Request) -> web.Response:
    portal_id = portal_id_of(request)
    me = session_for(request, portal_id)
    figures = await portal_queues(reader(request), portal_id)
    return render(
        request,
        "overview.html",
        me,
        portal_id=portal_id,
        queues=figures["queues"],
        fields=FIELDS,
    )


async def queues_json(request: web.Request) -> web.Response:
    portal_id = portal_id_of(request)
    session_for(request, portal_id)
    return web.json_response(await portal_queues(reader(request), portal_id))


async def _policy(request: web.Request, portal_id: int, name: str) -> Policy:
    for policy in await reader(request).policies(portal_id):
        if policy.name == name:
            return policy
    raise ConsoleError(404, "not_found", f"portal {portal_id} has no queue named {name!r}")


async def _steerable(request: web.Request, portal_id: int, name: str) -> bool:
    """Whether pause/resume can reach the policy: the config store holds it (a ThrottlePolicy in
    a cluster; locally, one made through the config API). A policy the local operator reads from
    a manifest file is changed in that file, so its page offers no button that would answer 404.
    A store that does not answer now is assumed to hold it; the POST then says what happened."""
    try:
        return await console_of(request).host[CONFIG_STORE].get(portal_id, name) is not None
    except ConfigStoreUnavailable:
        return True


def settings_rows(policy: Policy) -> list[tuple[str, str]]:
    """The policy's spec as (term, description) pairs, nested fields flattened with dots."""
    rows: list[tuple[str, str]] = []

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, dict):
            for key, inner in value.items():
                walk(f"{prefix}.{key}" if prefix else key, inner)
        elif isinstance(value, list):
            rows.append((prefix, ", ".join(str(v) for v in value) or "none"))
        else:
            rows.append((prefix, str(value).lower() if isinstance(value, bool) else str(value)))

    walk("", {k: v for k, v in policy.spec().items() if k not in ("name", "portalId")})
    return rows


async def queue_page(request: web.Request) -> web.Response:
    portal_id = portal_id_of(request)
    me = session_for(request, portal_id)
    name = request.match_info["name"]
    policy = await _policy(request, portal_id, name)
    figures = await portal_queues(reader(request), portal_id)
    row = next((q for q in figures["queues"] if q["name"] == name), None)
    pool = console_of(request).host[DB_POOL]
    points = failures = changes = None
    if pool is not None:
        now = datetime.now(UTC)
        points = await from_history(request, releases_per_minute(pool, portal_id, name, now))
        failures = await from_history(request, recent_failures(pool, portal_id, name))
        changes = await from_history(request, recent_changes(pool, portal_id, name))
    return render(
        request,
        "queue.html",
        me,
        portal_id=portal_id,
        name=name,
        inline=name.startswith(INLINE_PREFIX),
        steerable=me.operator
        and not name.startswith(INLINE_PREFIX)
        and await _steerable(request, portal_id, name),
        row=row,
        fields=FIELDS,
        settings=settings_rows(policy),
        paused=policy.paused,
        points=points,
        chart=releases_chart(points) if points is not None else None,
        failures=failures,
        changes=changes,
    )


def _events(execution: dict[str, Any]) -> list[tuple[datetime, str]]:
    """One execution's history as (when, what) in time order."""
    events: list[tuple[datetime, str]] = []
    obj = f"{execution.get('object_type') or 'record'} {execution.get('object_id') or '?'}"
    if execution.get("received_at"):
        events.append((execution["received_at"], f"Received from HubSpot ({obj})"))
    if execution.get("released_at"):
        events.append((execution["released_at"], "Released by its queue"))
    outcome = execution["outcome"]
    end = execution.get("completed_at") or execution.get("updated_at")
    if outcome == "completed" and end:
        events.append((end, "Completed at HubSpot: the workflow continued"))
    elif outcome in ("failed", "expired") and end:
        reason = execution.get("last_error") or "no reason recorded"
        events.append((end, f"{outcome.capitalize()}: {reason}"))
    return sorted(events, key=lambda e: e[0])


async def lookup_page(request: web.Request) -> web.Response:
    portal_id = portal_id_of(request)
    me = session_for(request, portal_id)
    query = request.query.get("q", "").strip()
    if len(query) > MAX_QUERY:
        raise ConsoleError(400, "invalid_parameter", f"q is longer than {MAX_QUERY} characters")
    executions = None
    if query:
        executions = await from_history(request, lookup(_pool(request), portal_id, query))
    found = [{"execution": e, "events": _events(e)} for e in executions or []]
    return render(
        request,
        "lookup.html",
        me,
        portal_id=portal_id,
        query=query,
        searched=bool(query),
        unavailable=bool(query) and executions is None,
        found=found,
    )


_PORTAL = r"/portals/{portal_id:\d+}"

routes = [
    web.get(_PORTAL, overview),
    web.get(_PORTAL + "/queues.json", queues_json),
    web.get(_PORTAL + "/queues/{name}", queue_page),
    web.get(_PORTAL + "/lookup", lookup_page),
]
"""Relative to the console's mount point (/console)."""
