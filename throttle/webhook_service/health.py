"""Liveness, readiness and metrics.

`/healthz` says only that the process answers (a restart would not fix Redis being down).
`/readyz` says whether this pod can take HubSpot's traffic: Redis answers, the engine's scripts
are loaded, the data is in this code's layout (throttle/engine/layout.py) and the policy table
has been read once — otherwise the ingress should send the request
to another pod. It also names `faults` outside the pod that stop completions — HubSpot refusing the
app's own configuration (the client secret, a proxy; shared by whichever process met it) — without
failing readiness: this pod still queues HubSpot's executions correctly, and they are completed
once the fault is fixed. `/metrics` renders the process' own registry (never the global one).
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import logging
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from throttle.engine.layout import CURRENT_LAYOUT, ensure_layout, read_layout
from throttle.engine.scripts import ENGINE_SCRIPTS, lua_source
from throttle.hubspot.config_fault import read_shared
from throttle.webhook_service.appkeys import METRICS, POLICY_INDEX, QUEUE, REDIS

log = logging.getLogger(__name__)

READY_TIMEOUT_S = 2.0


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def _check_redis(request: web.Request) -> str:
    try:
        async with asyncio.timeout(READY_TIMEOUT_S):
            await request.app[REDIS].ping()
    except Exception as exc:
        return f"unreachable ({type(exc).__name__})"
    return "ok"


@functools.cache
def script_shas() -> tuple[str, ...]:
    return tuple(
        hashlib.sha1(lua_source(name).encode(), usedforsecurity=False).hexdigest()
        for name in ENGINE_SCRIPTS
    )


def _all_true(answer: Any) -> bool:
    """SCRIPT EXISTS answers a list of flags (a dict of lists per node on Redis Cluster)."""
    if isinstance(answer, dict):
        return all(_all_true(v) for v in answer.values())
    if isinstance(answer, list | tuple):
        return all(_all_true(v) for v in answer)
    return bool(answer)


async def _check_scripts(request: web.Request) -> str:
    redis = request.app[REDIS]
    try:
        async with asyncio.timeout(READY_TIMEOUT_S):
            loaded = _all_true(await redis.script_exists(*script_shas()))
        if not loaded:
            # Load them now (e.g. after a Redis restart), so the next probe finds them.
            async with asyncio.timeout(READY_TIMEOUT_S):
                await request.app[QUEUE].scripts.load()
            return "loading"
    except Exception as exc:
        return f"unknown ({type(exc).__name__})"
    return "ok"


async def _check_layout(request: web.Request) -> str:
    """The data in the layout this code reads; migrated now if Redis was down at start."""
    try:
        async with asyncio.timeout(READY_TIMEOUT_S):
            state = await read_layout(request.app[REDIS])
        if state.stamped and state.version >= CURRENT_LAYOUT:
            return "ok"
        async with asyncio.timeout(READY_TIMEOUT_S):
            await ensure_layout(request.app[REDIS])
    except Exception as exc:
        return f"not current ({type(exc).__name__})"
    return "migrating"


async def readyz(request: web.Request) -> web.Response:
    checks = {"redis": await _check_redis(request)}
    checks["scripts"] = await _check_scripts(request) if checks["redis"] == "ok" else "unknown"
    checks["layout"] = await _check_layout(request) if checks["redis"] == "ok" else "unknown"
    checks["policies"] = "ok" if request.app[POLICY_INDEX].revision >= 0 else "not loaded yet"
    ready = all(value == "ok" for value in checks.values())
    faults: dict[str, str] = {}
    if checks["redis"] == "ok":
        try:
            async with asyncio.timeout(READY_TIMEOUT_S):
                record = await read_shared(request.app[REDIS])
        except TimeoutError:
            record = None
        if record is not None:
            faults["hubspot_config"] = record.summary()
    return web.json_response(
        {"status": "ready" if ready else "not ready", "checks": checks, "faults": faults},
        status=200 if ready else 503,
    )


async def metrics(request: web.Request) -> web.Response:
    body = generate_latest(request.app[METRICS].registry)
    response = web.Response(body=body)
    response.content_type = CONTENT_TYPE_LATEST.split(";")[0]
    response.charset = "utf-8"
    return response


routes = [
    web.get("/healthz", healthz),
    web.get("/readyz", readyz),
    web.get("/metrics", metrics),
]
