"""The webhook app on real Redis and PostgreSQL, plus helpers to send signed HubSpot requests."""

from __future__ import annotations

import json
import time
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from prometheus_client import CollectorRegistry

from throttle.engine.policy import Policy
from throttle.engine.registry import reconcile
from throttle.hubspot.signatures import sign_v2, sign_v3
from throttle.settings import Settings
from throttle.webhook_service.app import create_app
from throttle.webhook_service.appkeys import INSTALLED, POLICY_INDEX, QUEUE

ACTION_PATH = "/api/hubspot/action"
PORTAL = 102670506
ACTION_DEF = 10646377


def execution(
    callback_id: str = "ap-1-2-3-0", portal: int = PORTAL, **overrides: Any
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "callbackId": callback_id,
        "origin": {
            "portalId": portal,
            "actionDefinitionId": ACTION_DEF,
            "actionDefinitionVersion": 1,
        },
        "context": {"source": "WORKFLOWS", "workflowId": 192814114},
        "object": {
            "objectId": 904,
            "objectType": "CONTACT",
            "properties": {"email": "a@example.com"},
        },
        "inputFields": {"policy": "enrichment"},
    }
    body.update(overrides)
    return body


def policy(name: str = "enrichment", portal: int = PORTAL, **spec: Any) -> Policy:
    data: dict[str, Any] = {"name": name, "portalId": portal, "rate": {"limit": 10, "period": "1m"}}
    data.update(spec)
    return Policy.model_validate(data)


class Webhook:
    """A running app with its test client and the secrets to sign requests with."""

    def __init__(self, client: TestClient, app: web.Application, settings: Settings) -> None:
        self.client = client
        self.app = app
        self.settings = settings
        self.secret = settings.client_secrets[0]

    def url(self, path: str) -> str:
        assert self.settings.public_url is not None
        return self.settings.public_url + path

    def signed(
        self,
        body: bytes,
        path: str = ACTION_PATH,
        version: str = "v3",
        secret: str | None = None,
        timestamp_ms: int | None = None,
        url: str | None = None,
    ) -> dict[str, str]:
        secret = secret or self.secret
        url = url or self.url(path)
        if version == "v3":
            ts = timestamp_ms if timestamp_ms is not None else int(time.time() * 1000)
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

    async def post_action(
        self, payload: dict[str, Any] | bytes, path: str = ACTION_PATH, **sign: Any
    ) -> tuple[int, Any]:
        body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        response = await self.client.post(path, data=body, headers=self.signed(body, path, **sign))
        return response.status, await response.json()

    async def add_policy(self, p: Policy) -> Policy:
        await reconcile(self.app[QUEUE], p)
        await self.app[POLICY_INDEX].refresh()
        return p

    async def depth(self, p: Policy) -> int:
        """Executions waiting in the policy's queues (all of them)."""
        return (await self.app[QUEUE].stats(p)).depth

    async def install(self, *portals: int, stopped: dict[int, str] | None = None) -> None:
        """Mark portals installed through the Redis mirror (what the refresher reads)."""
        from throttle.engine import keys

        mirror = {
            "installed": list(portals),
            "stopped": {str(k): v for k, v in (stopped or {}).items()},
        }
        await self.app[QUEUE].redis.set(keys.INSTALLED_PORTALS, json.dumps(mirror))
        await self.app[INSTALLED].refresh()


StartWebhook = Callable[..., Awaitable[Webhook]]


@pytest.fixture
def start_webhook(
    make_settings: Callable[..., Settings], aiohttp_client: Any, redis: Any
) -> StartWebhook:
    async def start(**overrides: Any) -> Webhook:
        overrides.setdefault("require_installed_portal", False)
        settings = make_settings(**overrides)
        app = create_app(settings, registry=CollectorRegistry())
        client = await aiohttp_client(app)
        return Webhook(client, app, settings)

    return start


@pytest.fixture
async def webhook(start_webhook: StartWebhook) -> Webhook:
    return await start_webhook()


def settings_env(settings: Settings) -> dict[str, str]:
    """The settings as the environment of a child process (upper-case names, secrets revealed)."""
    import os

    from pydantic import SecretStr

    env = {k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "LANG", "TMPDIR")}
    env["PYTHONUNBUFFERED"] = "1"
    for name in type(settings).model_fields:
        value = getattr(settings, name)
        if value is None:
            continue
        if isinstance(value, SecretStr):
            value = value.get_secret_value()
        if isinstance(value, bool):
            value = "true" if value else "false"
        env[name.upper()] = str(value)
    return env
