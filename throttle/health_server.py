"""`/healthz` and `/metrics` for the processes that serve no other HTTP (dispatcher, operator).

The webhook serves both on its own app; the others open this small server on METRICS_PORT
(0 = none) for the kubelet's probes and Prometheus' scrapes, and close it when they stop.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any

from aiohttp import web
from prometheus_client import CollectorRegistry
from prometheus_client.aiohttp import make_aiohttp_handler

Health = Callable[[], tuple[bool, Mapping[str, Any]]]
"""Whether the process is alive, and the JSON body `/healthz` answers (200, or 503 if not)."""


def health_app(registry: CollectorRegistry, health: Health) -> web.Application:
    async def healthz(_request: web.Request) -> web.Response:
        ok, body = health()
        return web.json_response(dict(body), status=200 if ok else 503)

    app = web.Application()
    app.router.add_get("/metrics", make_aiohttp_handler(registry))
    app.router.add_get("/healthz", healthz)
    return app


@contextlib.asynccontextmanager
async def health_server(
    host: str, port: int, registry: CollectorRegistry, health: Health
) -> AsyncIterator[int | None]:
    """Serve `health_app` on host:port while the block runs; yields the port (None when 0)."""
    if not port:
        yield None
        return
    runner = web.AppRunner(health_app(registry, health), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    try:
        yield port
    finally:
        await runner.cleanup()
