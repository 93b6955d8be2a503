"""The console's own aiohttp app: routes, templates, sessions, errors, security headers.

`create_console_app(host)` builds it over the webhook app `host`, whose clients (Redis, the
PostgreSQL pool, the HubSpot client, the config store) it uses: `create_app` mounts it at
`/console/` when CONSOLE_SESSION_KEY is set, or `run_webhook` serves it alone on CONSOLE_PORT
(`standalone_app`). Its errors are pages (with `#error`), or JSON for a client that asks for it,
answered by a middleware of this app only, so the action endpoint pays nothing for it.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from importlib.resources import files
from pathlib import Path

from aiohttp import web

from throttle.engine.queue_status import StatusReader
from throttle.webhook_service.appkeys import CONSOLE, SETTINGS
from throttle.webhook_service.console import pages, signin, steering
from throttle.webhook_service.console.context import (
    PREFIX,
    ConsoleError,
    error_page,
    templates,
)
from throttle.webhook_service.console.sessions import SessionSigner
from throttle.webhook_service.console.state import Console
from throttle.webhook_service.errors import fallback_routes

log = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

SECURITY_HEADERS = {
    "Cache-Control": "no-store",
    "Referrer-Policy": "no-referrer",  # a link's token must not leave in a Referer
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Content-Security-Policy": "default-src 'self'; frame-ancestors 'none'; "
    "form-action 'self'; base-uri 'none'",
}


@web.middleware
async def console_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        response = await handler(request)
    except ConsoleError as exc:
        response = error_page(request, exc.status, exc.error, exc.detail)
    except web.HTTPException as exc:
        if exc.status < 400:
            exc.headers.update(SECURITY_HEADERS)
            raise
        code = exc.reason.lower().replace(" ", "_")
        response = error_page(request, exc.status, code, exc.reason)
    except Exception:
        log.exception("unhandled error in %s %s", request.method, request.path)
        response = error_page(request, 500, "internal_error", "an internal error occurred")
    response.headers.update(SECURITY_HEADERS)
    return response


async def reader_ctx(app: web.Application) -> AsyncIterator[None]:
    """The figures' reader: the same construction as `throttle status`, so the same figures,
    on a Redis connection pool of the console's own (its reads never wait behind the action
    endpoint's auto-pipelined writes)."""
    console = app[CONSOLE]
    console.status_reader = StatusReader.from_settings(console.settings)
    yield
    await console.status_reader.close()


def create_console_app(host: web.Application) -> web.Application:
    settings = host[SETTINGS]
    key = settings.console_session_key
    assert key is not None, "the console is mounted only with CONSOLE_SESSION_KEY set"
    app = web.Application(middlewares=[console_errors])
    app[CONSOLE] = Console(host, settings, SessionSigner(key.get_secret_value()), templates())
    app.cleanup_ctx.append(reader_ctx)
    app.add_routes([*signin.routes, *pages.routes, *steering.routes])
    static = Path(str(files("throttle.webhook_service.console").joinpath("static")))
    app.router.add_static("/static/", static)
    return app


def mount(host: web.Application) -> None:
    """Under the webhook's own port, when the console is on and has no port of its own."""
    settings = host[SETTINGS]
    if settings.console_session_key is not None and settings.console_port is None:
        host.add_subapp(PREFIX + "/", create_console_app(host))


def standalone_app(host: web.Application) -> web.Application:
    """The console alone (CONSOLE_PORT): its own listener, the webhook app's clients."""
    outer = web.Application()
    outer.add_subapp(PREFIX + "/", create_console_app(host))
    outer.add_routes(fallback_routes())
    return outer
