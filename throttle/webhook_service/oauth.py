"""The app's install flow and the uninstall webhook.

- `GET /api/oauth/authorize` sends the browser to HubSpot's authorize page with the client id,
  the scopes (`automation oauth`), `redirect_uri` = PUBLIC_URL + `/api/oauth/callback`, and a
  signed, expiring, single-use `state`.
  The browser gets a cookie (HttpOnly, Secure under https, SameSite=Lax, sent to the callback
  path only) whose hash the state carries.
- `GET /api/oauth/callback` checks `state` (wrong, expired, replayed, or from a browser without
  the matching cookie → 400, nothing stored),
  exchanges the code, learns the portal (token response `hub_id`, else introspection), stores the
  tokens encrypted, tells this pod's installed-portals view at once (so the portal's first
  executions here are held, not answered 503 while the view catches up), and shows a plain
  page. JSON instead of HTML when the client asks for it.
- `POST /api/hubspot/uninstall`: HubSpot documents no uninstall payload, so this endpoint takes
  its webhook shape: a JSON array (or one object) of events `{subscriptionType: "app.uninstall",
  portalId, appId?, ...}`, signed like HubSpot's other calls (v3, else v2; the webhook's
  verifier). Each such portal is marked uninstalled with the reason (its tokens kept, disabled,
  for UNINSTALL_GRACE_DAYS); the dispatcher then stops it and records its queued executions as
  failed with that reason.
- A code exchange HubSpot refuses for the app's own configuration (client secret, a proxy) is
  recorded as a configuration fault (/readyz, metrics, `throttle doctor`); the page tells the
  portal's admin only that it is not their doing.

Codes and tokens never reach a log line or a page.
"""

from __future__ import annotations

import html
import json
import logging
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlencode, urlsplit

from aiohttp import web

from throttle.hubspot.client import (
    ConfigFault,
    HubSpotClient,
    RateLimited,
    Retryable,
    TokenGrant,
    TokenInfo,
    TokenRefused,
)
from throttle.hubspot.oauth_state import OAuthStateSigner, StateError
from throttle.hubspot.tokens import StaleUninstall
from throttle.settings import Settings
from throttle.webhook_service.appkeys import (
    HUBSPOT,
    INSTALLED,
    METRICS,
    REDIS,
    SETTINGS,
    TOKENS,
    VERIFIER,
)
from throttle.webhook_service.errors import ErrorAnswer

log = logging.getLogger(__name__)

SCOPES = ("automation", "oauth")
CALLBACK_PATH = "/api/oauth/callback"
BROWSER_COOKIE = "throttle_install"
UNINSTALL_PATH = "/api/hubspot/uninstall"


def _signer(request: web.Request) -> OAuthStateSigner:
    secret = request.app[SETTINGS].secret_key_base
    if secret is None:
        raise ErrorAnswer(503, "not_configured", "SECRET_KEY_BASE is not set")
    return OAuthStateSigner(secret.get_secret_value())


def _redirect_uri(request: web.Request) -> str:
    public_url = request.app[SETTINGS].public_url
    if not public_url:
        raise ErrorAnswer(503, "not_configured", "PUBLIC_URL is not set")
    return public_url + CALLBACK_PATH


def _set_browser_cookie(
    request: web.Request, response: web.StreamResponse, value: str, max_age: int
) -> None:
    """The install's browser key: SameSite=Lax still comes along on HubSpot's top-level redirect
    back to the callback, and the path keeps it off every other request."""
    public = urlsplit(_redirect_uri(request))
    response.set_cookie(
        BROWSER_COOKIE,
        value,
        max_age=max_age,
        path=public.path,
        secure=public.scheme == "https",
        httponly=True,
        samesite="Lax",
    )


def _wants_json(request: web.Request) -> bool:
    return "application/json" in request.headers.get("Accept", "")


def _page(request: web.Request, status: int, title: str, text: str) -> web.Response:
    if _wants_json(request):
        if status >= 400:
            raise ErrorAnswer(status, title.lower().replace(" ", "_"), text)
        return web.json_response({"status": "installed", "detail": text}, status=status)
    body = (
        "<!doctype html><html><head><meta charset='utf-8'>"
        f"<title>Throttle: {html.escape(title)}</title></head>"
        f"<body><h1>{html.escape(title)}</h1><p>{html.escape(text)}</p></body></html>"
    )
    return web.Response(status=status, text=body, content_type="text/html")


def _count(request: web.Request, result: str) -> None:
    request.app[METRICS].oauth_installs.labels(result).inc()


async def authorize(request: web.Request) -> web.StreamResponse:
    settings = request.app[SETTINGS]
    if not settings.hubspot_client_id:
        raise ErrorAnswer(503, "not_configured", "HUBSPOT_CLIENT_ID is not set")
    signer = _signer(request)
    issued = signer.issue()
    found = web.HTTPFound(authorize_url(settings, _redirect_uri(request), issued.state))
    _set_browser_cookie(request, found, issued.browser_key, signer.ttl_s)
    raise found


def authorize_url(settings: Settings, redirect_uri: str, state: str) -> str:
    """HubSpot's authorize page for the app's client (the install, and the console's sign-in)."""
    params = {
        "client_id": settings.hubspot_client_id or "",
        "redirect_uri": redirect_uri,
        "scope": " ".join(SCOPES),
        "state": state,
    }
    return f"{settings.hubspot_app_base}/oauth/authorize?{urlencode(params)}"


async def callback(request: web.Request) -> web.StreamResponse:
    query = request.query
    signer = _signer(request)
    try:
        state = signer.verify(query.get("state"), request.cookies.get(BROWSER_COOKIE))
    except StateError as exc:
        _count(request, "bad_state")
        return _page(request, 400, "Install refused", str(exc))
    if "error" in query:
        _count(request, "denied")
        description = query.get("error_description") or query["error"]
        return _page(request, 400, "Install cancelled", f"HubSpot answered: {description[:200]}")
    code = query.get("code")
    if not code:
        _count(request, "bad_request")
        return _page(request, 400, "Install refused", "the code parameter is missing")
    try:
        await signer.claim(request.app[REDIS], state)
    except StateError as exc:
        _count(request, "bad_state")
        return _page(request, 400, "Install refused", str(exc))

    tokens = request.app[TOKENS]
    if tokens is None:
        raise ErrorAnswer(503, "not_configured", "DATABASE_URL and ENCRYPTION_KEY are needed")
    client: HubSpotClient = request.app[HUBSPOT]
    grant = await client.exchange_code(code, _redirect_uri(request))
    if isinstance(grant, TokenRefused):
        _count(request, "exchange_failed")
        log.warning("OAuth code exchange refused: HTTP %s %s", grant.status, grant.error)
        return _page(request, 400, "Install refused", f"HubSpot refused the code ({grant.error})")
    if isinstance(grant, ConfigFault):
        # About this deployment, not the install: recorded where operators look (/readyz,
        # metrics, doctor); the page says only that it is not the admin's doing.
        _count(request, "exchange_failed")
        await tokens.faults.report(grant)
        if grant.kind == "server_error":
            return _page(request, 502, "HubSpot unavailable", "try the install again in a minute")
        return _page(
            request,
            502,
            "Install failed",
            "HubSpot (or something on the way to it) refused this Throttle deployment's app "
            "configuration; its operators can see why. Try the install again once they have "
            "fixed it.",
        )
    if isinstance(grant, Retryable | RateLimited):
        _count(request, "exchange_failed")
        return _page(request, 502, "HubSpot unavailable", "try the install again in a minute")
    assert isinstance(grant, TokenGrant)
    await tokens.faults.clear()
    portal_id, hub_domain = grant.hub_id, None
    info = await client.introspect(grant.access_token)
    if isinstance(info, TokenInfo):
        portal_id, hub_domain = info.hub_id, info.hub_domain or None
    if portal_id is None:
        _count(request, "exchange_failed")
        return _page(request, 502, "HubSpot unavailable", "could not learn which portal installed")
    try:
        await tokens.install(portal_id, grant, hub_domain)
    except Exception as exc:  # PostgreSQL unreachable: say so, store nothing half-way
        _count(request, "store_failed")
        log.error("portal %s: tokens not stored (%s)", portal_id, type(exc).__name__)
        return _page(request, 503, "Install failed", "could not save the install; start again")
    installed = request.app.get(INSTALLED)  # absent in apps mounting only these routes
    if installed is not None:
        installed.note_installed(portal_id)
    _count(request, "installed")
    log.info("portal %s installed the app", portal_id)
    return _page(
        request, 200, "Throttle is installed", f"Throttle is installed for portal {portal_id}."
    )


async def uninstall(request: web.Request) -> web.StreamResponse:
    body = await request.read()
    request.app[VERIFIER].require(request, body)
    try:
        data: Any = json.loads(body)
    except ValueError:
        raise ErrorAnswer(400, "invalid_json", "the body is not JSON") from None
    events = data if isinstance(data, list) else [data]
    app_id = request.app[SETTINGS].hubspot_app_id
    tokens = request.app[TOKENS]
    if tokens is None:
        raise ErrorAnswer(503, "not_configured", "DATABASE_URL and ENCRYPTION_KEY are needed")
    portals: list[tuple[int, datetime | None]] = []
    for index, event in enumerate(events):
        if not isinstance(event, dict):
            raise ErrorAnswer(400, "invalid_event", "each event must be an object", f"[{index}]")
        kind = str(event.get("subscriptionType", ""))
        if "uninstall" not in kind.lower():
            continue
        if app_id is not None and event.get("appId") not in (None, app_id, str(app_id)):
            continue
        portal = event.get("portalId")
        if (
            isinstance(portal, bool)
            or not isinstance(portal, int | str)
            or not str(portal).isdigit()
        ):
            raise ErrorAnswer(
                400, "invalid_event", "portalId must be a number", f"[{index}].portalId"
            )
        portals.append((int(portal), _occurred_at(event.get("occurredAt"), index)))
    done: list[int] = []
    stale: list[int] = []
    for portal_id, occurred_at in portals:
        try:
            await tokens.uninstall(
                portal_id, "uninstalled: app uninstall webhook", "uninstall_webhook", occurred_at
            )
        except StaleUninstall as exc:
            # HubSpot retries a webhook for hours: a retry of the uninstall before a reinstall
            # must not wipe the reinstall. Answered 200 (a 4xx would be retried again).
            log.warning(
                "portal %s: ignored an uninstall event from %s, before its install at %s "
                "(a late retry)",
                portal_id,
                occurred_at,
                exc.installed_at,
            )
            stale.append(portal_id)
            continue
        done.append(portal_id)
    installed = request.app.get(INSTALLED)
    if done and installed is not None:
        installed.refresh_soon()
    return web.json_response({"uninstalled": done, "ignoredAsOlderThanInstall": stale})


def _occurred_at(value: Any, index: int) -> datetime | None:
    """The event's `occurredAt` (epoch milliseconds, as HubSpot's webhooks send), if any."""
    if value is None:
        return None
    text = str(value)
    # At most 13 digits (until the year 2286): a longer one would overflow a datetime.
    if isinstance(value, bool) or not isinstance(value, int | str) or not text.isdigit():
        text = ""
    if not text or not text.isascii() or len(text) > 13:
        raise ErrorAnswer(
            400, "invalid_event", "occurredAt must be epoch milliseconds", f"[{index}].occurredAt"
        )
    return datetime.fromtimestamp(int(text) / 1000, UTC)


def routes() -> list[web.RouteDef]:
    return [
        web.get("/api/oauth/authorize", authorize),
        web.get(CALLBACK_PATH, callback),
        web.post(UNINSTALL_PATH, uninstall),
    ]
