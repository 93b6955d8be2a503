"""One error shape for every endpoint: `{"error": code, "detail": text, "field"?: path}`.

Handlers raise `ApiError`; the middleware turns it, aiohttp's own HTTP errors (404, 405, 413) and
anything unexpected into that JSON shape. An unexpected exception is logged with its traceback
(the log filter masks secrets) and answered with a fixed text, so no internal detail leaks.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Awaitable, Callable

from aiohttp import web

log = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class ApiError(Exception):
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


@web.middleware
async def json_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except ApiError as exc:
        return error_response(exc.status, exc.error, exc.detail, exc.field, exc.headers)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        if exc.content_type == "application/json":
            raise
        headers = {k: v for k, v in exc.headers.items() if k.lower() in ("allow", "retry-after")}
        detail = exc.reason
        if exc.status == 413:
            detail = "request body is larger than this service accepts"
        return error_response(exc.status, _code(exc.reason), detail, headers=headers)
    except Exception:
        log.exception("unhandled error in %s %s", request.method, request.path)
        return error_response(500, "internal_error", "an internal error occurred; see the logs")
