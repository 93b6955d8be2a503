"""REDIS_DURABILITY=strict: BLOCK is answered only once the write is on disk.

Judged from HubSpot's side: the simulator's driver sends executions through the real webhook app
and records which it was told are held (BLOCK); Redis is then SIGKILLed right after the answers
and restarted from its append-only file, and every held execution must still be in its queue.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestServer
from prometheus_client import CollectorRegistry

from tests.fixtures.webhook import policy, settings_env
from throttle.engine import keys
from throttle.engine.redis_client import DurabilityError
from throttle.engine.registry import reconcile
from throttle.settings import Settings
from throttle.webhook_service.app import create_app
from throttle.webhook_service.appkeys import POLICY_INDEX, QUEUE
from throttle_dev.localenv import RedisServer
from throttle_dev.simulator import Driver, Simulator, SimulatorConfig, TrafficPlan

PORTAL, ACTION = 1001, 1


@pytest.fixture
def strict_redis(tmp_path: Path) -> Any:
    server = RedisServer(tmp_path / "redis", appendonly=True, appendfsync="always").start()
    yield server
    server.stop()


@pytest.fixture
async def strict_webhook(make_settings: Any, strict_redis: RedisServer) -> AsyncIterator[Settings]:
    settings = make_settings(
        redis_url=strict_redis.url, redis_durability="strict", require_installed_portal=False
    )
    app = create_app(settings, registry=CollectorRegistry())
    server = TestServer(app, host="127.0.0.1", port=settings.port)
    await server.start_server()
    await reconcile(app[QUEUE], policy("enrichment", portal=PORTAL, actionId=ACTION))
    await app[POLICY_INDEX].refresh()
    yield settings
    await server.close()


async def test_redis_sigkilled_right_after_the_answers_loses_no_blocked_execution(
    strict_webhook: Settings, strict_redis: RedisServer
) -> None:
    settings = strict_webhook
    secret = settings.client_secrets[0]
    sim = Simulator(SimulatorConfig(client_secret=secret))
    plan = TrafficPlan(
        executions=300,
        portals=[PORTAL],
        action_definition_id=ACTION,
        policy="enrichment",
        concurrency=32,
    )
    async with Driver(sim, f"{settings.public_url}/api/hubspot/action") as driver:
        result = await driver.run(plan)
    strict_redis.stop(kill=True)  # SIGKILL, the moment the last answer arrived
    assert result.answers == {"BLOCK": 300}, result

    strict_redis.start()  # from its append-only file
    client = strict_redis.client()
    try:
        queued = {
            k.decode()
            for k in await client.hkeys(keys.meta(policy("enrichment", portal=PORTAL).key))
        }
    finally:
        await client.aclose()
    held = {c.callback_id for c in sim.callbacks.values() if c.state == "blocked"}
    assert len(held) == 300
    assert held - queued == set()  # every execution HubSpot was told is held is still queued


async def test_strict_start_refused_on_a_redis_with_appendfsync_everysec(
    make_settings: Any, redis_server: RedisServer, tmp_path: Path
) -> None:
    """The app does not start, and `throttle webhook` (a real process) ends with one line
    naming the setting and Redis' configuration."""
    settings = make_settings(redis_durability="strict", host="127.0.0.1")  # the session's Redis
    app = create_app(settings, registry=CollectorRegistry())
    with pytest.raises(DurabilityError, match="appendfsync everysec"):
        await TestServer(app, host="127.0.0.1", port=settings.port).start_server()

    env = settings_env(settings)
    if "PYTHONPATH" in os.environ:  # the code under test, wherever it is checked out
        env["PYTHONPATH"] = os.environ["PYTHONPATH"]
    proc = subprocess.run(
        [sys.executable, "-m", "throttle.cli.main", "webhook"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )
    assert proc.returncode == 2, proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("throttle: error: REDIS_DURABILITY=strict"), proc.stderr
    assert "REDIS_URL has appendonly yes, appendfsync everysec" in last
    assert "Traceback" not in proc.stderr
    assert settings.client_secrets[0] not in proc.stderr
