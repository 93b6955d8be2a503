"""Getting into the console: sign in with HubSpot, or enter by a console link; and leaving.

Sign in with HubSpot is the OAuth authorization-code flow of the app's own client: the state is
the install flow's (`OAuthStateSigner`: signed, expiring, single use, bound to the browser by a
cookie), keyed by CONSOLE_SESSION_KEY for this purpose. The callback exchanges the code through
the one HubSpot client, learns the portal (`hub_id`) and the user (`user`) by introspection, and
then drops the tokens: the console never stores or logs a user's HubSpot token. HubSpot's token
says nothing of a role: CONSOLE_ROLES does (unlisted users are viewers).

A console link (`throttle console-link`) carries its own signed, expiring token; entering by it
sets a session with the link's portal and role, and redirects, so the token leaves the address
bar (and, with `Referrer-Policy: no-referrer`, is never sent on).
"""

from __future__ import annotations

import logging
import time

from aiohttp import web

from throttle.hubspot.client import TokenGrant, TokenInfo
from throttle.hubspot.oauth_state import OAuthStateSigner, StateError
from throttle.webhook_service.appkeys import HUBSPOT, REDIS
from throttle.webhook_service.console.context import (
    COOKIE,
    PREFIX,
    ConsoleError,
    checked_form,
    console_of,
    current_session,
    render,
    set_session_cookie,
)
from throttle.webhook_service.console.sessions import Role, SessionError
from throttle.webhook_service.console.state import Console
from throttle.webhook_service.oauth import authorize_url

log = logging.getLogger(__name__)

CALLBACK = "/oauth/callback"
BROWSER_COOKIE = "throttle_console_oauth"
STATE_PURPOSE = b" console sign-in"


def _state_signer(console: Console) -> OAuthStateSigner:
    key = console.settings.console_session_key
    assert key is not None  # the console is mounted only with a key
    return OAuthStateSigner(key.get_secret_value(), purpose=STATE_PURPOSE)


def _redirect_uri(console: Console) -> str:
    public_url = console.settings.public_url
    if not public_url:
        raise ConsoleError(503, "not_configured", "PUBLIC_URL is not set")
    return public_url + PREFIX + CALLBACK


def start_session(
    console: Console, portal_id: int, role: Role, who: str, until: float | None = None
) -> web.HTTPSeeOther:
    """303 to the portal's overview, carrying a fresh session cookie (at most until `until`)."""
    ttl = console.settings.console_session_ttl
    expires = time.time() + ttl if until is None else min(time.time() + ttl, until)
    token, _ = console.signer.issue("session", portal_id, role, who, expires)
    found = web.HTTPSeeOther(f"{PREFIX}/portals/{portal_id}")
    set_session_cookie(found, token, int(expires - time.time()))
    log.info("console: %s signed in to portal %s as %s", who, portal_id, role)
    return found


async def home(request: web.Request) -> web.StreamResponse:
    try:
        session = current_session(request)
    except SessionError:
        raise web.HTTPSeeOther(f"{PREFIX}/sign-in") from None
    raise web.HTTPSeeOther(f"{PREFIX}/portals/{session.portal_id}")


async def sign_in(request: web.Request) -> web.Response:
    hubspot = bool(console_of(request).settings.hubspot_client_id)
    return render(request, "sign_in.html", None, hubspot=hubspot)


async def oauth_start(request: web.Request) -> web.StreamResponse:
    console = console_of(request)
    settings = console.settings
    if not settings.hubspot_client_id:
        raise ConsoleError(503, "not_configured", "HUBSPOT_CLIENT_ID is not set")
    signer = _state_signer(console)
    issued = signer.issue()
    found = web.HTTPFound(authorize_url(settings, _redirect_uri(console), issued.state))
    found.set_cookie(
        BROWSER_COOKIE,
        issued.browser_key,
        max_age=signer.ttl_s,
        path=PREFIX + CALLBACK,
        secure=True,
        httponly=True,
        samesite="Lax",
    )
    raise found


async def oauth_callback(request: web.Request) -> web.StreamResponse:
    console = console_of(request)
    query = request.query
    signer = _state_signer(console)
    try:
        state = signer.verify(query.get("state"), request.cookies.get(BROWSER_COOKIE))
        if "error" in query:
            description = (query.get("error_description") or query["error"])[:200]
            raise ConsoleError(403, "sign_in_cancelled", f"HubSpot answered: {description}")
        code = query.get("code")
        if not code:
            raise ConsoleError(400, "invalid_parameter", "the code parameter is missing")
        await signer.claim(console.host[REDIS], state)
    except StateError as exc:
        raise ConsoleError(403, "sign_in_refused", str(exc)) from None
    client = console.host[HUBSPOT]
    grant = await client.exchange_code(code, _redirect_uri(console))
    if not isinstance(grant, TokenGrant):
        log.warning("console sign-in: the code exchange failed (%s)", type(grant).__name__)
        raise ConsoleError(502, "hubspot_refused", "HubSpot did not accept the sign-in; retry")
    info = await client.introspect(grant.access_token)
    del grant  # the user's tokens end here: never stored, never logged
    if not isinstance(info, TokenInfo) or not info.user:
        raise ConsoleError(502, "hubspot_refused", "HubSpot did not say who signed in; retry")
    user = info.user.lower()
    role = console.settings.console_role_table.get(info.hub_id, {}).get(user, "viewer")
    found = start_session(
        console, info.hub_id, "operator" if role == "operator" else "viewer", user
    )
    found.del_cookie(BROWSER_COOKIE, path=PREFIX + CALLBACK)
    raise found


async def link(request: web.Request) -> web.StreamResponse:
    console = console_of(request)
    try:
        granted = console.signer.read("link", request.query.get("t"))
    except SessionError as exc:
        raise ConsoleError(403, "link_refused", f"{exc}: ask for a new console link") from None
    raise start_session(
        console, granted.portal_id, granted.role, granted.who, until=granted.expires_at
    )


async def sign_out(request: web.Request) -> web.StreamResponse:
    try:
        session = current_session(request)
    except SessionError:
        raise web.HTTPSeeOther(f"{PREFIX}/sign-in") from None
    await checked_form(request, session)
    found = web.HTTPSeeOther(f"{PREFIX}/sign-in")
    found.del_cookie(COOKIE, path=PREFIX + "/")
    raise found


routes = [
    web.get("/", home),
    web.get("/sign-in", sign_in),
    web.get("/oauth/start", oauth_start),
    web.get(CALLBACK, oauth_callback),
    web.get("/link", link),
    web.post("/sign-out", sign_out),
]
