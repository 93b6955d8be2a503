"""Install the app in a simulated portal the way a HubSpot admin does: through the OAuth flow.

Webhook `GET /api/oauth/authorize` → the (simulated) HubSpot authorize page, which approves at
once and redirects back → webhook `GET /api/oauth/callback?code&state` → tokens exchanged with the
simulator and stored encrypted in PostgreSQL. The only simulator-specific step is naming which
portal approves (`portal_id`), the choice a real admin makes in HubSpot's account picker.
"""

from __future__ import annotations

from collections.abc import Mapping
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import aiohttp


class InstallError(RuntimeError):
    """The OAuth flow did not end with the webhook's success page."""


def _with_query(url: str, **params: str) -> str:
    parts = urlsplit(url)
    query = parse_qsl(parts.query, keep_blank_values=True) + list(params.items())
    return urlunsplit(parts._replace(query=urlencode(query)))


async def _redirect(session: aiohttp.ClientSession, url: str, step: str) -> str:
    async with session.get(url, allow_redirects=False) as response:
        location = response.headers.get("Location")
        if response.status not in (301, 302, 303, 307) or not location:
            body = (await response.text())[:300]
            raise InstallError(f"{step}: expected a redirect, got HTTP {response.status}: {body}")
        return location


def _rewritten(url: str, rewrite: Mapping[str, str]) -> str:
    for public, reachable in rewrite.items():
        if url == public or url.startswith(public.rstrip("/") + "/"):
            return reachable.rstrip("/") + url[len(public.rstrip("/")) :]
    return url


async def install_portal(
    session: aiohttp.ClientSession,
    webhook_url: str,
    portal_id: int,
    rewrite: Mapping[str, str] | None = None,
) -> None:
    """Run the install flow for one portal; raises InstallError naming the step that failed.

    `rewrite` maps the base URLs the redirects name (the webhook's PUBLIC_URL, HubSpot's app base)
    to the ones this client reaches them at, e.g. inside a cluster where PUBLIC_URL is a
    port-forward's http://localhost:8080 and the webhook is its Service."""
    rewrite = rewrite or {}
    authorize = await _redirect(session, f"{webhook_url}/api/oauth/authorize", "authorize")
    callback = await _redirect(
        session,
        _rewritten(_with_query(authorize, portal_id=str(portal_id)), rewrite),
        "HubSpot consent",
    )
    if "error=" in urlsplit(callback).query:
        raise InstallError(f"HubSpot refused the install: {callback}")
    async with session.get(_rewritten(callback, rewrite), allow_redirects=False) as response:
        if response.status != 200:
            body = (await response.text())[:300]
            raise InstallError(f"callback: HTTP {response.status}: {body}")


def client_session() -> aiohttp.ClientSession:
    """A session that keeps cookies for 127.0.0.1 too (the flow may bind `state` to one)."""
    return aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True))
