"""The two guards in front of the handlers: load shedding and the failed-attempt limiter.

Their behaviour under real load and real guessing is proven elsewhere (the load scenario of the
fault suite, test_config_api_auth.py); here each decision is checked directly, with the clock and
the load under the test's control.
"""

from __future__ import annotations

import asyncio
from typing import Any

from aiohttp import web

from tests.fixtures.webhook import StartWebhook, execution, policy
from throttle.webhook_service import auth_limit, shedding
from throttle.webhook_service.errors import json_errors

ACTION = "/api/hubspot/action"


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_failed_attempts_slide_out_of_the_window() -> None:
    clock = Clock()
    attempts = auth_limit.FailedAttempts(limit=3, window_s=60, clock=clock)
    for _ in range(3):
        assert attempts.retry_after("10.0.0.1") is None
        attempts.record("10.0.0.1")
        clock.now += 1
    assert attempts.retry_after("10.0.0.1") == 57
    assert attempts.retry_after("10.0.0.2") is None, "another client is not locked out"
    clock.now += 56.5
    assert attempts.retry_after("10.0.0.1") == 1
    clock.now += 1
    assert attempts.retry_after("10.0.0.1") is None


def test_memory_stays_bounded_under_a_flood_of_addresses() -> None:
    attempts = auth_limit.FailedAttempts(limit=2, window_s=60)
    for i in range(auth_limit.MAX_CLIENTS + 500):
        attempts.record(f"client-{i}")
    assert len(attempts._seen) == auth_limit.MAX_CLIENTS


class FakeRequest:
    def __init__(self, remote: str, forwarded: str | None = None) -> None:
        self.remote = remote
        self.headers = {"X-Forwarded-For": forwarded} if forwarded else {}


def test_the_client_behind_a_trusted_proxy_is_the_last_untrusted_hop() -> None:
    import ipaddress

    trusted = [ipaddress.ip_network("10.0.0.0/8")]
    address = auth_limit.client_address
    assert address(FakeRequest("203.0.113.9", "1.2.3.4"), trusted) == "203.0.113.9"  # type: ignore[arg-type]
    assert address(FakeRequest("10.1.1.1", "1.2.3.4, 198.51.100.7"), trusted) == "198.51.100.7"  # type: ignore[arg-type]
    assert address(FakeRequest("10.1.1.1", "198.51.100.7, 10.2.2.2"), trusted) == "198.51.100.7"  # type: ignore[arg-type]
    assert address(FakeRequest("10.1.1.1", "not-an-ip"), trusted) == "10.1.1.1"  # type: ignore[arg-type]
    assert address(FakeRequest("10.1.1.1"), trusted) == "10.1.1.1"  # type: ignore[arg-type]


def test_sustained_lag_lowers_the_admitted_share_and_a_single_pause_does_not() -> None:
    shedder = shedding.LoadShedder(max_inflight=10, max_lag_s=0.2, dice=lambda: 0.5)
    shedder.observe_lag(2.0)  # one long pause
    for _ in range(shedding.SUSTAINED_SAMPLES - 1):
        shedder.observe_lag(0.0)
    assert shedder.admit == 1.0
    assert shedder.overloaded() is None
    for _ in range(shedding.SUSTAINED_SAMPLES + 10):
        shedder.observe_lag(0.3)
    assert shedder.admit < 0.5, "the share falls while the lag lasts"
    assert shedder.overloaded() == "loop_lag", "a request whose dice is above the share is shed"
    for _ in range(200):
        shedder.observe_lag(0.3)
    assert shedder.admit == shedding.MIN_ADMIT, "never shed everything"
    for _ in range(shedding.SUSTAINED_SAMPLES + 100):
        shedder.observe_lag(0.01)
    assert shedder.admit == 1.0, "recovers once the loop keeps up"
    assert shedder.overloaded() is None


async def test_the_guard_sheds_hot_routes_past_the_inflight_cap(aiohttp_client: Any) -> None:
    release = asyncio.Event()
    handled: list[str] = []

    async def slow(request: web.Request) -> web.Response:
        handled.append(request.path)
        await release.wait()
        return web.json_response({"ok": True})

    app = web.Application()
    shedder = shedding.install(app, max_inflight=2, max_lag_ms=0)
    app.add_routes(json_errors(shedder.guard([web.post(ACTION, slow)])))
    app.add_routes([web.get("/api/config", slow), web.get("/healthz", slow)])
    client = await aiohttp_client(app)
    held = [asyncio.create_task(client.post(ACTION)) for _ in range(2)]
    while shedder.inflight < 2:
        await asyncio.sleep(0.01)
    refused = await client.post(ACTION)
    assert refused.status == 429
    assert refused.headers["Retry-After"] == "1"
    assert (await refused.json())["error"] == "overloaded"
    assert len(handled) == 2, "a shed request never reaches the handler"
    others = [asyncio.create_task(client.get(p)) for p in ("/api/config", "/healthz")]
    while len(handled) < 4:
        await asyncio.sleep(0.01)
    release.set()
    for task in [*held, *others]:
        assert (await task).status == 200
    assert shedder.inflight == 0
    assert (await client.post(ACTION)).status == 200, "recovers when load drops"
    assert shedder.shed_total == 1


async def _slow_sender(host: str, port: int, path: str) -> tuple[asyncio.StreamReader, Any]:
    """Headers announcing a 1,000-byte body, then 10 bytes of it: a client on a slow link (or
    one holding slots on purpose)."""
    reader, writer = await asyncio.open_connection(host, port)
    writer.write(
        f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
        'Content-Length: 1000\r\n\r\n{"callbac'.encode()
    )
    await writer.drain()
    return reader, writer


async def test_slow_bodies_do_not_hold_admission_slots(start_webhook: StartWebhook) -> None:
    """With every slot taken by requests whose bodies trickle in, HubSpot's own requests were
    shed (429). Bodies are now read, within a deadline, before a request counts."""
    webhook = await start_webhook(webhook_max_inflight=2, webhook_body_timeout_seconds=1.0)
    await webhook.add_policy(policy())
    server = webhook.client.server
    host, port = str(server.host), int(server.port or 0)
    slow = [
        await _slow_sender(host, port, path)
        for path in (ACTION, ACTION, ACTION, "/api/hubspot/options")
    ]
    await asyncio.sleep(0.2)  # the slow requests are in their handlers, reading
    status, answer = await webhook.post_action(execution("cb-on-time"))
    assert status == 200, answer
    assert answer["outputFields"]["hs_execution_state"] == "BLOCK"
    for reader, writer in slow:
        head = await asyncio.wait_for(reader.read(4096), timeout=10)
        assert head.startswith(b"HTTP/1.1 408"), head[:200]
        assert b"body_timeout" in head
        writer.close()
    assert webhook.app[shedding.SHEDDER].inflight == 0
