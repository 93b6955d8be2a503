"""Every `web.AppKey` of the webhook service, in one module (no module globals elsewhere).

Values are set by `create_app` (plain objects) or by its cleanup contexts (clients that open
and close with the app). Other modules' handlers (e.g. `oauth.py`) read what they need from here;
add a key with a small edit when you need one.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import aiohttp
from aiohttp import web

from throttle.metrics import Metrics
from throttle.settings import Settings

if TYPE_CHECKING:
    from throttle.engine.policy_index import PolicyIndex
    from throttle.engine.queue import Queue
    from throttle.hubspot.client import HubSpotClient
    from throttle.webhook_service.config_store import ConfigStore
    from throttle.webhook_service.console.state import Console
    from throttle.webhook_service.portals import InstalledPortals
    from throttle.webhook_service.verification import SignatureVerifier

SETTINGS = web.AppKey("settings", Settings)
METRICS = web.AppKey("metrics", Metrics)
VERIFIER: web.AppKey[SignatureVerifier] = web.AppKey("verifier")
REDIS: web.AppKey[Any] = web.AppKey("redis")
"""redis.asyncio.Redis or RedisCluster (decode_responses=False)."""
QUEUE: web.AppKey[Queue] = web.AppKey("queue")
POLICY_INDEX: web.AppKey[PolicyIndex] = web.AppKey("policy_index")
INSTALLED: web.AppKey[InstalledPortals] = web.AppKey("installed_portals")
DB_POOL: web.AppKey[Any] = web.AppKey("db_pool")
"""asyncpg.Pool (min_size 0: the webhook starts and serves actions while PostgreSQL is down)."""
HTTP = web.AppKey("http_session", aiohttp.ClientSession)
HUBSPOT: web.AppKey[HubSpotClient] = web.AppKey("hubspot")
TOKENS: web.AppKey[Any] = web.AppKey("tokens")
CONFIG_STORE: web.AppKey[ConfigStore] = web.AppKey("config_store")
CONSOLE: web.AppKey[Console] = web.AppKey("console")
"""On the console's own app: its signer, templates and the webhook app whose clients it uses."""
