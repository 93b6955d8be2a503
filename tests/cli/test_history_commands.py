"""`throttle migrate`, `throttle recover` and `throttle history` as their commands wire them."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from tests.fixtures.builders import item, policy
from throttle.cli.main import main
from throttle.dispatcher.history_writer import HistoryWriter
from throttle.engine.queue import Queue
from throttle.engine.registry import reconcile
from throttle.history.migrations import migrate, migration_files
from throttle.history.pool import create_pool
from throttle.metrics import Metrics
from throttle.settings import Settings


async def copy_history(redis: Any, database_url: str) -> None:
    """What a dispatcher's history writer does between two commands: events into PostgreSQL."""
    writer = HistoryWriter(redis, lambda: create_pool(database_url), Metrics())
    await writer.ensure_groups()
    await writer.step()
    await writer.close()


async def test_migrate_command_applies_each_migration_once(
    database_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # no stray .env from the working folder
    monkeypatch.setenv("DATABASE_URL", database_url)
    runner = CliRunner()
    first = await asyncio.to_thread(runner.invoke, main, ["migrate"])
    assert first.exit_code == 0, first.output
    shipped = [f"applied {v:04d}_{name}" for v, name, _ in migration_files()]
    assert first.output.splitlines() == shipped
    again = await asyncio.to_thread(runner.invoke, main, ["migrate"])
    assert again.exit_code == 0, again.output
    assert again.output.strip() == "database is up to date"


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
    await copy_history(redis, settings.database_url)
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
    await copy_history(redis, settings.database_url)
    runner = CliRunner()
    one = await asyncio.to_thread(
        runner.invoke, main, ["history", "--portal", "7", "--callback", "cb-hist"]
    )
    assert one.exit_code == 0, one.output
    assert "cb-hist" in one.output
    assert "completed" in one.output
    none = await asyncio.to_thread(runner.invoke, main, ["history", "--portal", "8"])
    assert "no executions recorded for portal 8" in none.output
