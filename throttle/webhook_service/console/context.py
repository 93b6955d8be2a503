"""What every console handler shares: the console's state, its sessions, pages and refusals."""

from __future__ import annotations

import contextlib
from typing import Any

import jinja2
from aiohttp import web

from throttle.engine.queue_status import StatusReader
from throttle.webhook_service.appkeys import CONSOLE
from throttle.webhook_service.console import formatting
from throttle.webhook_service.console.sessions import Session, SessionError
from throttle.webhook_service.console.state import Console
from throttle.webhook_service.errors import error_body

PREFIX = "/console"
COOKIE = "throttle_console"


class ConsoleError(Exception):
    """A request the console refuses: the status, a code and a text safe to show."""

    def __init__(self, status: int, error: str, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.error = error
        self.detail = detail


def console_of(request: web.Request) -> Console:
    return request.app[CONSOLE]


def reader(request: web.Request) -> StatusReader:
    status_reader = console_of(request).status_reader
    assert status_reader is not None, "opened by the console app's cleanup context"
    return status_reader


def wants_json(request: web.Request) -> bool:
    return request.path.endswith(".json") or "application/json" in request.headers.get("Accept", "")


def render(
    request: web.Request, template: str, me: Session | None, status: int = 200, **context: Any
) -> web.Response:
    """A page for the session `me` (None: nobody signed in), with the CSRF token its forms carry
    (the sign-out form is on every page)."""
    console = console_of(request)
    csrf = console.signer.csrf_token(me) if me else ""
    page = console.templates.get_template(template)
    text = page.render(prefix=PREFIX, me=me, csrf=csrf, **context)
    return web.Response(status=status, text=text, content_type="text/html")


def error_page(request: web.Request, status: int, error: str, detail: str) -> web.Response:
    if wants_json(request):
        return web.json_response(error_body(error, detail), status=status)
    session = None
    with contextlib.suppress(SessionError):  # an error page shows who is signed in, if anyone
        session = current_session(request)
    return render(request, "error.html", session, status, status_code=status, detail=detail)


def current_session(request: web.Request) -> Session:
    return console_of(request).signer.read("session", request.cookies.get(COOKIE))


def session_for(request: web.Request, portal_id: int, *, operator: bool = False) -> Session:
    """The request's session if it may see (`operator`: change) this portal, else 403."""
    try:
        session = current_session(request)
    except SessionError as exc:
        raise ConsoleError(403, "not_signed_in", f"{exc}: sign in first") from None
    if session.portal_id != portal_id:
        raise ConsoleError(
            403, "forbidden", f"this session is for portal {session.portal_id}, not {portal_id}"
        )
    if operator and not session.operator:
        raise ConsoleError(403, "forbidden", "only operators may change queues; you are a viewer")
    return session


async def checked_form(request: web.Request, session: Session) -> dict[str, str]:
    """The POSTed form, once its `csrf_token` matches the session's (else 403)."""
    form = await request.post()
    token = form.get("csrf_token")
    if not console_of(request).signer.csrf_ok(session, token if isinstance(token, str) else None):
        raise ConsoleError(403, "csrf", "the form's csrf_token is missing or wrong; reload")
    return {k: v for k, v in form.items() if isinstance(v, str)}


def set_session_cookie(response: web.StreamResponse, token: str, max_age: int) -> None:
    response.set_cookie(
        COOKIE,
        token,
        max_age=max(max_age, 0),
        path=PREFIX + "/",
        secure=True,
        httponly=True,
        samesite="Lax",
    )


def templates() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("throttle.webhook_service.console", "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
    )
    env.filters.update(formatting.FILTERS)
    return env
