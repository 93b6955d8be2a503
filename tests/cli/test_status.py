"""`throttle status` against a real Redis: what the engine holds, shown as a table."""

from __future__ import annotations

from typing import Any

import pytest
from click.testing import CliRunner
from rich.console import Console

from throttle.cli.main import main
from throttle.engine.policy import Policy
from throttle.engine.queue import Queue, QueueItem
from throttle.engine.queue_status import StatusReader, status_table
from throttle.engine.registry import reconcile
from throttle_dev.localenv import RedisServer


def item(n: int, policy: Policy) -> QueueItem:
    return QueueItem(
        callback_id=f"cb-{policy.name}-{n}",
        portal_id=policy.portal_id,
        action_definition_id=1,
        workflow_id=7,
        object_type="CONTACT",
        object_id=str(n),
        policy=policy.name,
    )


@pytest.fixture
async def loaded(redis: Any) -> tuple[Policy, Policy]:
    queue = Queue(redis)
    capped = Policy.model_validate(
        {
            "name": "capped",
            "portalId": 11,
            "rate": {"limit": 5, "period": "1m", "burst": 2},
            "dailyCap": {"limit": 100, "timeZone": "Europe/Paris"},
        }
    )
    paused = Policy.model_validate(
        {"name": "held", "portalId": 12, "rate": {"limit": 1, "period": "1h"}, "paused": True}
    )
    for policy in (capped, paused):
        await reconcile(queue, policy)
        for n in range(10):
            await queue.enqueue(item(n, policy), policy)
    taken = await queue.take()
    assert {r.policy for r in taken.released} == {"capped"}
    assert len(taken.released) == 3  # one now plus the burst of 2
    await queue.ack(taken.released[:1])
    return capped, paused


async def test_rows_show_queues_in_flight_today_and_drain(
    redis: Any, loaded: tuple[Policy, Policy]
) -> None:
    reader = StatusReader(redis)
    rows = {row.name: row for row in await reader.rows()}
    capped, held = rows["capped"], rows["held"]
    assert (capped.queued, capped.in_flight, capped.released_total) == (7, 2, 3)
    assert capped.completed_total == 1
    assert capped.released_today == 3
    assert capped.rate == "5/1m +2, ≤100/day"
    # 7 queued at 5 per minute after a spent burst: the last one goes in about 84 s.
    assert 70 < capped.drain_s < 90
    assert held.paused
    assert held.queued == 10
    assert held.released_today is None
    assert held.drain_s == float("inf")
    console = Console(width=160, record=True)
    console.print(status_table(list(rows.values())))
    text = console.export_text()
    assert "capped" in text
    assert "(paused)" in text
    assert "∞" in text


def test_cli_prints_the_table(
    redis_server: RedisServer, loaded: tuple[Policy, Policy], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("REDIS_URL", redis_server.url)
    result = CliRunner().invoke(main, ["status"], env={"COLUMNS": "160"})
    assert result.exit_code == 0, result.output
    assert "capped" in result.output
    assert "held" in result.output


def test_cli_names_the_missing_setting(monkeypatch: pytest.MonkeyPatch, tmp_path: Any) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("REDIS_URL", raising=False)
    result = CliRunner().invoke(main, ["status"])
    assert result.exit_code == 2
    assert "REDIS_URL" in result.output
