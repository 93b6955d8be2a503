"""The webhook service's app factory and server: no module globals, every client in a cleanup_ctx.

`create_app(settings)` builds the application tests and `serve` both run. Each client opens and
closes in its own cleanup context (Redis + the engine's Queue on an auto-pipelined connection,
the policy table refresher, the installed-portals refresher, the PostgreSQL pool, the HTTP
session with the HubSpot client and token manager, the config API's policy store), so a test
gets a fresh set and shutdown closes them in reverse order.

Start-up does not wait for PostgreSQL or HubSpot: the action endpoint needs neither. Redis being
down at start is logged; `/readyz` stays 503 until it answers and the policies are loaded —
except with REDIS_DURABILITY=strict, where the start stops (DurabilityError) unless Redis is
shown to fsync every write before answering.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import signal
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
from aiohttp import web
from aiohttp.abc import AbstractAccessLogger
from prometheus_client import CollectorRegistry
from redis.exceptions import RedisError

from throttle import tasks
from throttle.engine.layout import ensure_layout
from throttle.engine.policy import Policy
from throttle.engine.policy_index import PolicyIndex
from throttle.engine.queue import Queue
from throttle.engine.redis_client import (
    DurabilityError,
    redis_client,
    require_strict_durability,
)
from throttle.engine.registry import reconcile, reconcile_awaited, retire
from throttle.hubspot.client import HubSpotClient
from throttle.hubspot.crypto import TokenCipher
from throttle.hubspot.tokens import TokenManager, TokenStore
from throttle.kube import api_client, client_configuration
from throttle.metrics import Metrics
from throttle.settings import Settings
from throttle.webhook_service import (
    actions,
    auth_limit,
    config_api,
    early_shed,
    health,
    oauth,
    openapi,
    options,
    shedding,
)
from throttle.webhook_service.appkeys import (
    CONFIG_STORE,
    DB_POOL,
    HTTP,
    HUBSPOT,
    INSTALLED,
    METRICS,
    POLICY_INDEX,
    QUEUE,
    REDIS,
    SETTINGS,
    TOKENS,
    VERIFIER,
)
from throttle.webhook_service.autopipeline import AutoPipeline
from throttle.webhook_service.config_store import ClusterConfigStore, LocalConfigStore
from throttle.webhook_service.console import app as console
from throttle.webhook_service.errors import fallback_routes, json_errors
from throttle.webhook_service.portals import InstalledPortals
from throttle.webhook_service.verification import SignatureVerifier

log = logging.getLogger(__name__)

POLICY_REFRESH_S = 2.0
PORTALS_REFRESH_S = 5.0
POLICY_RESYNC_S = 30.0
SHUTDOWN_TIMEOUT_S = 15.0
SLOW_REQUEST_S = 1.0


class AccessLogger(AbstractAccessLogger):
    """One line per request: method, path WITHOUT the query string (it may carry an OAuth code
    or state), status, duration. No headers: they carry signatures and bearer tokens.

    Only numbers ride along as structured fields: every string field of a record passes the
    secret-masking filter, which on the hot path would cost more than the request itself."""

    def log(self, request: web.BaseRequest, response: web.StreamResponse, time: float) -> None:
        self.logger.info(
            "%s %s %s %.1fms",
            request.method,
            request.path,
            response.status,
            time * 1000,
            extra={"status": response.status, "duration_ms": round(time * 1000, 2)},
        )


class ErrorAccessLogger(AccessLogger):
    """Only what needs a look: a status >= 400 or a request slower than a second.

    The default: a line per accepted action costs about as much CPU as the rest of the request,
    and what succeeded is already counted in metrics and recorded in the execution history."""

    def log(self, request: web.BaseRequest, response: web.StreamResponse, time: float) -> None:
        # Cheapest test first: aiohttp calls this for every request, and a miss in the
        # request's own mapping (`request.get`) raises and catches a KeyError (~1 µs).
        if response.status < 400 and time < SLOW_REQUEST_S:
            return
        if request.get(shedding.SHED):
            return  # shed under load: counted in metrics; a line each would deepen the overload
        super().log(request, response, time)


# --- cleanup contexts ---------------------------------------------------------------------------


async def redis_ctx(app: web.Application) -> AsyncIterator[None]:

    settings = app[SETTINGS]
    redis = redis_client(settings)
    if settings.redis_durability == "strict":
        # BLOCK promises "held": refuse to start rather than promise what a crash can undo.
        try:
            await require_strict_durability(redis)
        except DurabilityError:
            await redis.aclose()
            raise
    app[REDIS] = redis
    # Concurrent requests' enqueue calls share network writes (one round trip each still).
    client = redis if settings.redis_cluster else AutoPipeline(redis)
    app[QUEUE] = Queue(client)
    try:
        await app[QUEUE].scripts.load()
        await ensure_layout(redis)  # before serving
    except (RedisError, OSError) as exc:  # LayoutTooNew is neither: it stops the start
        log.warning("Redis not reachable at start (%s); /readyz will say so", type(exc).__name__)
    yield
    await client.aclose()  # the auto-pipeline closes its own connection and the wrapped client


async def _loop(name: str, interval: float, step: Any, first_delay: float) -> None:
    await asyncio.sleep(first_delay)
    while True:
        try:
            await step()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.warning("%s refresh failed (%s)", name, type(exc).__name__)
        await asyncio.sleep(interval)


@contextlib.asynccontextmanager
async def _background(
    name: str, interval: float, step: Any, *, at_start: bool = True, run: Any = None
) -> AsyncIterator[None]:
    """Run `step` every `interval` seconds while the app runs (once before serving if
    `at_start`, bounded so a slow dependency cannot hold the start-up). `run`: the caller's
    own loop (a coroutine function) instead of a plain one, e.g. one that can be woken early."""
    if at_start:
        with contextlib.suppress(Exception):
            async with asyncio.timeout(5.0):
                await step()
    loop = run() if run is not None else _loop(name, interval, step, interval if at_start else 1.0)
    async with tasks.running(loop, name=name):
        yield


async def policy_index_ctx(app: web.Application) -> AsyncIterator[None]:

    index = PolicyIndex(app[REDIS])
    app[POLICY_INDEX] = index
    async with _background("policy index", POLICY_REFRESH_S, index.refresh):
        yield


async def lag_sampler_ctx(app: web.Application) -> AsyncIterator[None]:
    """The load shedder's measure of the event loop's lag, while the app runs."""
    watch = app[shedding.SHEDDER].watch_loop
    async with _background("loop lag sampler", 0.0, None, at_start=False, run=watch):
        yield


async def db_ctx(app: web.Application) -> AsyncIterator[None]:
    """A lazy pool: no connection until the config API or OAuth needs one."""
    import asyncpg

    dsn = app[SETTINGS].database_url
    if dsn is None:
        app[DB_POOL] = None
        yield
        return
    pool = await asyncpg.create_pool(dsn, min_size=0, max_size=4, command_timeout=10)
    app[DB_POOL] = pool
    yield
    async with asyncio.timeout(10):
        await pool.close()


async def http_ctx(app: web.Application) -> AsyncIterator[None]:

    settings = app[SETTINGS]
    metrics = app[METRICS]
    session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=15))
    app[HTTP] = session

    def count(operation: str, status: int | None) -> None:
        metrics.hubspot_requests.labels(operation, str(status or 0)).inc()

    secret = settings.hubspot_client_secret
    app[HUBSPOT] = HubSpotClient(
        session,
        settings.hubspot_api_base,
        client_id=settings.hubspot_client_id or "",
        client_secret=secret.get_secret_value() if secret else "",
        on_response=count,
    )
    app[TOKENS] = _token_manager(app)
    yield
    await session.close()


def _token_manager(app: web.Application) -> Any:
    """The OAuth flow's token manager, when encryption keys and a database are configured."""

    settings = app[SETTINGS]
    if app[DB_POOL] is None or not settings.encryption_keys:
        return None
    store = TokenStore(app[DB_POOL], TokenCipher(settings.encryption_keys))
    return TokenManager(
        store,
        app[HUBSPOT],
        app[REDIS],
        app[METRICS],
        refresh_margin_s=settings.hubspot_token_refresh_margin_seconds,
    )


async def installed_ctx(app: web.Application) -> AsyncIterator[None]:
    tokens = app[TOKENS]
    load = tokens.store.installations if tokens is not None else None
    portals = InstalledPortals(app[REDIS], load)
    app[INSTALLED] = portals
    # Its own loop: an unknown portal wakes it for an early refresh.
    async with _background(
        "installed portals",
        PORTALS_REFRESH_S,
        portals.refresh,
        run=lambda: portals.run(PORTALS_REFRESH_S),
    ):
        yield


async def config_store_ctx(app: web.Application) -> AsyncIterator[None]:

    settings = app[SETTINGS]
    if settings.config_backend == "cluster":
        client = api_client(client_configuration(settings.kubeconfig))
        app[CONFIG_STORE] = ClusterConfigStore(client, settings.config_namespace)
        yield
        client.close()
        return

    queue = app[QUEUE]

    async def apply(policy: Policy) -> Any:
        return await reconcile(queue, policy)

    async def remove(policy: Policy) -> Any:
        # A deleted policy retires as "Drain": what is queued is still released at its rate.
        return await retire(queue, policy, "Drain")

    async def apply_awaited(policies: list[Policy]) -> Any:
        return await reconcile_awaited(queue, {p.key: p for p in policies})

    store = LocalConfigStore(app[DB_POOL], apply, remove, apply_awaited)
    app[CONFIG_STORE] = store
    if app[DB_POOL] is None:
        yield
        return
    # Restores Redis' copy of the stored policies (e.g. after Redis lost its data).
    async with _background("policy store resync", POLICY_RESYNC_S, store.resync, at_start=False):
        yield


# --- the app ------------------------------------------------------------------------------------


def create_app(settings: Settings, *, registry: CollectorRegistry | None = None) -> web.Application:
    app = web.Application(
        client_max_size=settings.webhook_max_body_bytes,
    )
    app[SETTINGS] = settings
    app[METRICS] = Metrics(registry if registry is not None else CollectorRegistry())
    app[VERIFIER] = SignatureVerifier(settings)
    app.cleanup_ctx.extend(
        [redis_ctx, policy_index_ctx, db_ctx, http_ctx, installed_ctx, config_store_ctx]
    )
    shedder = shedding.install(
        app,
        settings.webhook_max_inflight,
        settings.webhook_shed_lag_ms,
        settings.webhook_body_timeout_seconds,
    )
    app.cleanup_ctx.append(lag_sampler_ctx)
    limit = auth_limit.install(
        app,
        settings.config_api_max_failures,
        settings.config_api_failure_window_seconds,
        settings.trusted_proxy_networks,
        config_api.has_token,
    )
    app.add_routes(actions.routes(app, shedder))  # sheds and answers its errors itself
    routes = [
        *shedder.guard(options.routes),
        *limit.guard(config_api.routes),
        *health.routes,
        *openapi.routes,
        *oauth.routes(),  # the HubSpot install flow (throttle/webhook_service/oauth.py)
    ]
    app.add_routes(json_errors(routes))
    console.mount(app)  # /console/, its own sub-app, when on and without a port of its own
    app.add_routes(fallback_routes())
    return app


async def freeze_heap(_: web.Application) -> None:
    """Move everything alive once the app has started (modules, pydantic schemas, the
    kubernetes and redis clients: ~90,000 objects) out of the cyclic GC's reach.

    Under load, in-flight requests' objects survive into the oldest generation, so full
    collections keep coming round, and each one walked that whole start-up heap (35-50 ms
    here): those pauses set the webhook's p99 at peak (~50 ms, ~15 ms once frozen; see
    bench/RESULTS.md). Frozen objects are still freed by reference counting; only cycles
    among them would stay, and the start-up heap is kept for the process' life anyway."""
    gc.collect()
    gc.freeze()


def new_event_loop() -> asyncio.AbstractEventLoop:
    """uvloop where it is installed (Linux, the image): its loop, sockets and transports are C,
    ~7% less CPU per action request than asyncio's (bench/RESULTS.md, webhook section)."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover - platforms without a uvloop wheel
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


def serve(settings: Settings) -> None:
    """`throttle webhook`: run until SIGTERM / SIGINT, on uvloop."""
    with asyncio.Runner(loop_factory=new_event_loop) as runner:
        runner.run(run_webhook(settings))


async def run_webhook(
    settings: Settings, stop: asyncio.Event | None = None, *, handle_signals: bool = True
) -> None:
    """Serve until `stop` is set (or SIGTERM / SIGINT); then stop accepting, finish in-flight
    requests (at most SHUTDOWN_TIMEOUT_S), close the clients in reverse order.

    An `AsyncExitStack` holds the runner's cleanup from before its setup: a start that fails
    half-way (a cleanup context raising: a bad DATABASE_URL, no Kubernetes credentials) still
    closes the contexts opened before it. `web.run_app` sets up outside its own `finally`."""
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT) if handle_signals else ():
        loop.add_signal_handler(sig, stop.set)
    app = create_app(settings)
    app.on_startup.append(freeze_heap)  # after every cleanup context has started
    access_log = settings.webhook_access_log
    logging_kwargs: dict[str, Any] = {
        "access_log": logging.getLogger("throttle.access") if access_log != "off" else None,
        "access_log_class": AccessLogger if access_log == "all" else ErrorAccessLogger,
    }
    runner = web.AppRunner(app, **logging_kwargs, shutdown_timeout=SHUTDOWN_TIMEOUT_S)
    async with contextlib.AsyncExitStack() as opened:
        opened.push_async_callback(runner.cleanup)
        await runner.setup()
        host, port, backlog = settings.host, settings.port, settings.webhook_listen_backlog
        if settings.webhook_early_shed:
            shedder = app[shedding.SHEDDER]
            await early_shed.ShedSite(runner, host, port, shedder, backlog=backlog).start()
        else:
            await web.TCPSite(runner, host, port, backlog=backlog).start()
        log.info(
            "webhook listening on %s:%s for %s (config API: %s store)",
            settings.host,
            settings.port,
            settings.public_url,
            settings.config_backend,
        )
        if settings.console_session_key is not None and settings.console_port is not None:
            # Its own listener, so a busy console never queues behind the action endpoint's
            # connections (nor the reverse); the clients are the webhook app's.
            console_runner = web.AppRunner(console.standalone_app(app), **logging_kwargs)
            opened.push_async_callback(console_runner.cleanup)
            await console_runner.setup()
            await web.TCPSite(console_runner, host, settings.console_port).start()
            log.info("console listening on %s:%s", host, settings.console_port)
        await stop.wait()
