"""One error shape for every endpoint: `{"error": code, "detail": text, "field"?: path}`.

Handlers raise `ErrorAnswer`; `json_errors` wraps every route (the action endpoint calls
`error_for` itself) so that it, aiohttp's own HTTP errors (413 from a body too large, ...) and
anything unexpected become that JSON shape, and `no_route`,
the last route, answers a path nothing else matched (404, or 405 with `Allow`). An unexpected
exception is logged with its traceback (the log filter masks secrets) and answered with a fixed
text, so no internal detail leaks.

A wrapper per route and a catch-all route rather than a middleware: with any middleware at all,
aiohttp runs its middleware machinery on every request, which cost the action endpoint ~4 µs
of its ~60 (bench/RESULTS.md, webhook ingest).
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from aiohttp import web

log = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class ErrorAnswer(Exception):
    """A request we refuse, with the status and the JSON body to answer."""

    def __init__(
        self,
        status: int,
        error: str,
        detail: str,
        field: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.error = error
        self.detail = detail
        self.field = field
        self.headers = headers


def error_body(error: str, detail: str, field: str | None = None) -> dict[str, str]:
    body = {"error": error, "detail": detail}
    if field is not None:
        body["field"] = field
    return body


def error_response(
    status: int,
    error: str,
    detail: str,
    field: str | None = None,
    headers: dict[str, str] | None = None,
) -> web.Response:
    return web.Response(
        status=status,
        body=json.dumps(error_body(error, detail, field)).encode(),
        content_type="application/json",
        headers=headers,
    )


def _code(reason: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", reason.lower()).strip("_") or "error"


def json_errors(routes: Iterable[web.RouteDef]) -> list[web.RouteDef]:
    """The same routes, each answering its errors in the JSON shape."""
    return [web.RouteDef(r.method, r.path, _answering_json(r.handler), r.kwargs) for r in routes]


def _answering_json(handler: Any) -> Handler:
    async def answer_json(request: web.Request) -> web.StreamResponse:
        try:
            response: web.StreamResponse = await handler(request)
        except Exception as exc:
            return error_for(request, exc)
        return response

    return answer_json


def error_for(request: web.Request, exc: Exception) -> web.Response:
    """The JSON answer for what a handler raised (re-raises a redirect or a JSON HTTP error,
    which are answers already). A handler that catches its own errors calls this directly."""
    if isinstance(exc, ErrorAnswer):
        return error_response(exc.status, exc.error, exc.detail, exc.field, exc.headers)
    if isinstance(exc, web.HTTPException):
        if exc.status < 400 or exc.content_type == "application/json":
            raise exc
        return _http_error(exc)
    log.exception("unhandled error in %s %s", request.method, request.path, exc_info=exc)
    return error_response(500, "internal_error", "an internal error occurred; see the logs")


def _http_error(exc: web.HTTPException) -> web.Response:
    headers = {k: v for k, v in exc.headers.items() if k.lower() in ("allow", "retry-after")}
    detail = exc.reason
    if exc.status == 413:
        detail = "request body is larger than this service accepts"
    return error_response(exc.status, _code(exc.reason), detail, headers=headers)


async def no_route(request: web.Request) -> web.Response:
    """A path no other route matched: 405 with `Allow` when another method would have, or 404."""
    allowed: set[str] = set()
    fallback = request.match_info.route.resource
    for resource in request.app.router.resources():
        if resource is not fallback:
            _, methods = await resource.resolve(request)
            allowed |= methods
    if allowed:
        return _http_error(web.HTTPMethodNotAllowed(request.method, allowed))
    return _http_error(web.HTTPNotFound())


def fallback_routes() -> list[web.RouteDef]:
    """Add last: it matches every path."""
    return [web.route("*", r"/{path:[\s\S]*}", no_route)]  # any path, newlines too
