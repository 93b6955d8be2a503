"""`throttle dispatcher` as its command wires it: health and metrics served beside the drain."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import aiohttp
import pytest

from throttle.dispatcher.service import run_dispatcher
from throttle.engine.redis_client import DurabilityError
from throttle.history.migrations import migrate
from throttle.settings import Settings
from throttle_dev.localenv import free_port


async def test_dispatcher_serves_health_and_metrics(
    make_settings: Callable[..., Settings], redis: Any
) -> None:
    settings = make_settings(metrics_port=free_port(), host="127.0.0.1")
    assert settings.database_url is not None
    await migrate(settings.database_url)
    stop = asyncio.Event()
    task = asyncio.create_task(run_dispatcher(settings, stop, handle_signals=False))
    base = f"http://127.0.0.1:{settings.metrics_port}"
    try:
        async with aiohttp.ClientSession() as session:
            for _ in range(100):
                try:
                    async with session.get(f"{base}/healthz") as response:
                        assert response.status == 200
                        break
                except aiohttp.ClientConnectionError:
                    await asyncio.sleep(0.1)
            else:
                pytest.fail("dispatcher never listened")
            async with session.get(f"{base}/metrics") as response:
                text = await response.text()
        assert "throttle_take_duration_seconds" in text
        assert "throttle_history_events_written_total" in text
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)


async def test_strict_durability_refuses_to_start_on_a_redis_without_appendfsync_always(
    make_settings: Callable[..., Settings], redis: Any
) -> None:
    """Releases and acks are as durable as the BLOCK answers: the session's Redis (everysec)
    is refused before anything runs."""
    settings = make_settings(metrics_port=free_port(), host="127.0.0.1", redis_durability="strict")
    with pytest.raises(DurabilityError, match="REDIS_URL has appendonly yes, appendfsync everysec"):
        await asyncio.wait_for(run_dispatcher(settings, handle_signals=False), 30)
