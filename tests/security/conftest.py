"""The webhook service and the HubSpot simulator served from a background thread on loopback.

Security tests need a live HTTP server (schemathesis and plain HTTP clients are synchronous) on
the real Redis and PostgreSQL of the session, and they need to read every log line the service
wrote through the production logging setup (`throttle.logs.configure_logging`, redaction and JSON
included). `LiveWebhook` gives both, plus a fingerprint of everything the service stores, so a
test can prove a rejected request changed nothing.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import io
import json
import logging
import secrets
import threading
import time
import uuid
from collections.abc import Coroutine, Iterator
from datetime import UTC, datetime, timedelta
from importlib.resources import files
from pathlib import Path
from typing import Any, TypeVar

import asyncpg
import pytest
import requests
from aiohttp import web
from prometheus_client import CollectorRegistry

from throttle.engine import keys
from throttle.engine.policy import Policy
from throttle.hubspot.signatures import sign_v2, sign_v3
from throttle.logs import configure_logging
from throttle.settings import Settings
from throttle_dev.localenv import PostgresServer, RedisServer, free_port
from throttle_dev.simulator import Simulator, SimulatorConfig, create_simulator_app

T = TypeVar("T")

ACTION_PATH = "/api/hubspot/action"
OPTIONS_PATH = "/api/hubspot/options"
PORTAL = 102670506
ACTION_DEF = 10646377
POLICY_NAME = "enrichment"

# Keys the service rewrites on its own timer (a cache of PostgreSQL rows the database
# fingerprint already covers); everything else in Redis must stay put on a rejected request.
VOLATILE_KEYS = {keys.INSTALLED_PORTALS.encode()} if hasattr(keys, "INSTALLED_PORTALS") else set()


class LogBuffer(io.StringIO):
    """A stream the logging handler writes to from the server thread."""

    def __init__(self) -> None:
        super().__init__()
        self._lock = threading.Lock()

    def write(self, text: str) -> int:
        with self._lock:
            return super().write(text)

    def isatty(self) -> bool:
        return False


def execution(
    callback_id: str | None = None, portal: int = PORTAL, **overrides: Any
) -> dict[str, Any]:
    """An execution request exactly as the contract shows it."""
    body: dict[str, Any] = {
        "callbackId": callback_id or f"ap-{portal}-{uuid.uuid4().int % 10**11}-7-0",
        "origin": {
            "portalId": portal,
            "actionDefinitionId": ACTION_DEF,
            "actionDefinitionVersion": 1,
        },
        "context": {"source": "WORKFLOWS", "workflowId": 192814114},
        "object": {"objectId": 904, "objectType": "CONTACT", "properties": {"email": "a@b.co"}},
        "inputFields": {"policy": POLICY_NAME},
    }
    body.update(overrides)
    return body


def migrate_files(dsn: str) -> None:
    """Every migration file in order, as `throttle migrate` would apply them to a new database."""

    async def run() -> None:
        conn = await asyncpg.connect(dsn)
        try:
            folder = files("throttle.history").joinpath("migrations")
            for entry in sorted(folder.iterdir(), key=lambda e: e.name):
                if entry.name.endswith(".sql"):
                    await conn.execute(entry.read_text(encoding="utf-8"))
        finally:
            await conn.close()

    asyncio.run(run())


def fresh_settings(
    redis_server: RedisServer, postgres_server: PostgresServer, **overrides: Any
) -> Settings:
    """Settings on the session's Redis and a new database, with new secrets and ports."""
    database = postgres_server.create_database(f"sec_{uuid.uuid4().hex[:12]}")
    migrate_files(database)
    port, sim_port = free_port(), free_port()
    values: dict[str, Any] = {
        "redis_url": redis_server.url,
        "database_url": database,
        "hubspot_client_id": str(uuid.uuid4()),
        "hubspot_client_secret": secrets.token_urlsafe(24),
        "encryption_key": base64.b64encode(secrets.token_bytes(32)).decode(),
        "secret_key_base": secrets.token_urlsafe(48),
        "throttle_api_token": secrets.token_urlsafe(32),
        "public_url": f"http://127.0.0.1:{port}",
        "hubspot_api_base": f"http://127.0.0.1:{sim_port}",
        "hubspot_app_base": f"http://127.0.0.1:{sim_port}",
        "host": "127.0.0.1",
        "port": port,
        "metrics_port": 0,
        "require_installed_portal": False,
        # v2 is refused by default; open a span so its code paths are exercised too.
        "allow_signature_v2_until": datetime.now(UTC) + timedelta(hours=1),
        "log_level": "DEBUG",
        "log_format": "json",
    }
    values.update(overrides)
    return Settings(_env_file=None, **values)  # type: ignore[call-arg]


class LiveWebhook:
    """`create_app(settings)` and a simulator sharing one event loop in a daemon thread."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        assert settings.public_url is not None
        self.url = settings.public_url
        self.sim_url = settings.hubspot_api_base
        self.sim = Simulator(
            SimulatorConfig(
                client_id=settings.hubspot_client_id or "",
                client_secret=settings.client_secrets[0],
            )
        )
        self.log = LogBuffer()
        self.http = requests.Session()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._runners: list[web.AppRunner] = []
        self._db: Any = None
        self._saved_handlers: list[logging.Handler] = []
        self._saved_level = logging.NOTSET
        self.app: web.Application | None = None

    # --- lifecycle -----------------------------------------------------------------------------
    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 30.0) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    def start(self) -> LiveWebhook:
        from throttle.webhook_service.app import create_app

        root = logging.getLogger()
        self._saved_handlers, self._saved_level = list(root.handlers), root.level
        configure_logging("DEBUG", "json", self.settings.secret_values(), stream=self.log)
        self._thread.start()
        self.app = create_app(self.settings, registry=CollectorRegistry())
        sim_port = int(self.sim_url.rsplit(":", 1)[1])
        # The simulator is HubSpot's side (its URLs carry tokens, as HubSpot's do): not logged.
        self.run(self._serve(create_simulator_app(simulator=self.sim), sim_port, access_log=False))
        self.run(self._serve(self.app, self.settings.port, access_log=True))
        assert self.settings.database_url is not None
        self._db = self.run(asyncpg.connect(self.settings.database_url))
        return self

    async def _serve(self, app: web.Application, port: int, access_log: bool) -> None:
        from throttle.webhook_service.app import AccessLogger

        runner = web.AppRunner(
            app,
            access_log=logging.getLogger("throttle.access") if access_log else None,
            access_log_class=AccessLogger,
        )
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        self._runners.append(runner)

    def stop(self) -> None:
        if self._db is not None:
            self.run(self._db.close())
        for runner in reversed(self._runners):
            self.run(runner.cleanup())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()
        self.http.close()
        root = logging.getLogger()
        root.handlers[:] = self._saved_handlers
        root.setLevel(self._saved_level)

    # --- requests ------------------------------------------------------------------------------
    def signed(
        self,
        body: bytes,
        path: str = ACTION_PATH,
        version: str = "v3",
        timestamp_ms: int | None = None,
    ) -> dict[str, str]:
        secret = self.settings.client_secrets[0]
        url = self.url + path
        if version == "v3":
            ts = int(time.time() * 1000) if timestamp_ms is None else timestamp_ms
            return {
                "X-HubSpot-Signature-v3": sign_v3(secret, "POST", url, body, ts),
                "X-HubSpot-Request-Timestamp": str(ts),
                "Content-Type": "application/json",
            }
        return {
            "X-HubSpot-Signature": sign_v2(secret, "POST", url, body),
            "X-HubSpot-Signature-Version": "v2",
            "Content-Type": "application/json",
        }

    def post_signed(self, path: str, body: bytes, **sign: Any) -> requests.Response:
        return self.http.post(
            self.url + path, data=body, headers=self.signed(body, path, **sign), timeout=30
        )

    def bearer(self, token: str | None = None) -> dict[str, str]:
        configured = self.settings.throttle_api_token
        assert configured is not None
        return {"Authorization": f"Bearer {token or configured.get_secret_value()}"}

    # --- state ---------------------------------------------------------------------------------
    def add_policy(self, name: str = POLICY_NAME, portal: int = PORTAL, **spec: Any) -> Policy:
        """Write a policy into the engine the way the config API's local store does."""
        from throttle.engine.registry import reconcile
        from throttle.webhook_service.appkeys import POLICY_INDEX, QUEUE

        data: dict[str, Any] = {
            "name": name,
            "portalId": portal,
            "rate": {"limit": 10, "period": "1m"},
        }
        data.update(spec)
        policy = Policy.model_validate(data)
        assert self.app is not None
        self.run(reconcile(self.app[QUEUE], policy))
        self.run(self.app[POLICY_INDEX].refresh())
        return policy

    def fingerprint(self) -> dict[str, str]:
        """A digest of every Redis key and every PostgreSQL row the service keeps."""
        return {"redis": self.run(self._redis_digest()), "postgres": self.run(self._db_digest())}

    async def _redis_digest(self) -> str:
        from throttle.webhook_service.appkeys import REDIS

        assert self.app is not None
        redis = self.app[REDIS]
        digest = hashlib.sha256()
        names = sorted([k async for k in redis.scan_iter(count=1000)])
        for name in names:
            if name in VOLATILE_KEYS:
                continue
            digest.update(name + b"\0" + ((await redis.dump(name)) or b"") + b"\0")
        return digest.hexdigest()

    async def _db_digest(self) -> str:
        tables = await self._db.fetch(
            "SELECT table_name FROM information_schema.tables "
            "WHERE table_schema = 'public' AND table_type = 'BASE TABLE' ORDER BY table_name"
        )
        digest = hashlib.sha256()
        for row in tables:
            name = row["table_name"].replace('"', '""')
            rows = "coalesce(string_agg(t::text, '|' ORDER BY t::text), '')"
            # The table name comes from the catalogue, quoted: not outside input.
            value = await self._db.fetchval(f'SELECT md5({rows}) FROM "{name}" t')  # noqa: S608
            digest.update(f"{name}={value};".encode())
        return digest.hexdigest()

    def log_text(self) -> str:
        return self.log.getvalue()


@pytest.fixture
def live_webhook(
    redis_server: RedisServer, postgres_server: PostgresServer
) -> Iterator[LiveWebhook]:
    redis_server.sync_client().flushall()
    live = LiveWebhook(fresh_settings(redis_server, postgres_server)).start()
    try:
        yield live
    finally:
        live.stop()


@pytest.fixture(scope="module")
def module_webhook(
    redis_server: RedisServer, postgres_server: PostgresServer
) -> Iterator[LiveWebhook]:
    """One live service for a module of many generated requests (fuzzing)."""
    redis_server.sync_client().flushall()
    live = LiveWebhook(fresh_settings(redis_server, postgres_server)).start()
    try:
        yield live
    finally:
        live.stop()


def dumps(data: Any) -> bytes:
    return json.dumps(data).encode()


def secrets_of(settings: Settings) -> dict[str, str]:
    """Every configured secret by setting name (what must never be logged)."""
    found = {}
    for name in (
        "hubspot_client_secret",
        "encryption_key",
        "secret_key_base",
        "throttle_api_token",
    ):
        value = getattr(settings, name)
        if value is not None:
            found[name.upper()] = value.get_secret_value()
    return found


def read_logs(folder: Path) -> str:
    return "\n".join(p.read_text(errors="replace") for p in sorted(folder.rglob("*.log")))
