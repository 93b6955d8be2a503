"""`throttle dispatcher` and `throttle recover` as their commands wire them."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import aiohttp
import pytest
from click.testing import CliRunner

from tests.fixtures.builders import item, policy
from throttle.cli.main import main
from throttle.dispatcher.service import run_dispatcher
from throttle.engine.queue import Queue
from throttle.engine.registry import reconcile
from throttle.history.store import migrate
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


async def test_recover_command(
    make_settings: Callable[..., Settings], redis: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = make_settings()
    assert settings.database_url is not None
    assert settings.redis_url is not None
    await migrate(settings.database_url)
    monkeypatch.setenv("REDIS_URL", settings.redis_url)
    monkeypatch.setenv("DATABASE_URL", settings.database_url)
    queue = Queue(redis)
    p = policy()
    await reconcile(queue, p)
    await queue.enqueue(item("cb-1"), p)
    from throttle.dispatcher.history_writer import HistoryWriter
    from throttle.history.store import create_pool
    from throttle.metrics import Metrics

    writer = HistoryWriter(redis, lambda: create_pool(settings.database_url or ""), Metrics())
    await writer.ensure_groups()
    await writer.step()
    await writer.close()
    runner = CliRunner()
    result = await asyncio.to_thread(runner.invoke, main, ["recover"])
    assert result.exit_code == 0, result.output
    assert "re-enqueued 0; already in Redis 1" in result.output


async def test_history_command_shows_a_timeline(
    make_settings: Callable[..., Settings], redis: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = make_settings()
    assert settings.database_url is not None
    await migrate(settings.database_url)
    monkeypatch.setenv("DATABASE_URL", settings.database_url)
    queue = Queue(redis)
    p = policy()
    await reconcile(queue, p)
    await queue.enqueue(item("cb-hist"), p)
    await queue.ack((await queue.take()).released)
    from throttle.dispatcher.history_writer import HistoryWriter
    from throttle.history.store import create_pool
    from throttle.metrics import Metrics

    writer = HistoryWriter(redis, lambda: create_pool(settings.database_url or ""), Metrics())
    await writer.ensure_groups()
    await writer.step()
    await writer.close()
    runner = CliRunner()
    one = await asyncio.to_thread(
        runner.invoke, main, ["history", "--portal", "7", "--callback", "cb-hist"]
    )
    assert one.exit_code == 0, one.output
    assert "cb-hist" in one.output
    assert "completed" in one.output
    none = await asyncio.to_thread(runner.invoke, main, ["history", "--portal", "8"])
    assert "no executions recorded for portal 8" in none.output
