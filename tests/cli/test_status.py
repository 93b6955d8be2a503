"""`throttle status` against a real Redis: what the engine holds, shown as a table or as JSON,
and each queue's state reached for real (the engine's take, HubSpot's 429 through the simulator,
the token store in PostgreSQL)."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from typing import Any

import aiohttp
import pytest
from click.testing import CliRunner
from rich.console import Console

from tests.fixtures.completer_on_simulator import setup
from tests.fixtures.hubspot_simulator import StartSimulator
from throttle.cli.main import main
from throttle.engine.calendars import DAYS
from throttle.engine.policy import Policy
from throttle.engine.queue import Queue, QueueItem
from throttle.engine.queue_status import (
    HubSpotBudgetTerms,
    StatusReader,
    status_json,
    status_table,
)
from throttle.engine.registry import reconcile
from throttle.hubspot.budget import PortalBudget
from throttle.hubspot.client import TokenGrant
from throttle.hubspot.tokens import TokenStore
from throttle.webhook_service.portals import InstalledPortals
from throttle_dev.localenv import RedisServer

THROTTLE = [sys.executable, "-m", "throttle.cli.main"]


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


def make(name: str, portal: int, **spec: Any) -> Policy:
    body = {"name": name, "portalId": portal, "rate": {"limit": 5, "period": "1m"}, **spec}
    return Policy.model_validate(body)


async def hold(queue: Queue, policy: Policy, n: int) -> None:
    await reconcile(queue, policy)
    for i in range(n):
        await queue.enqueue(item(i, policy), policy)


@pytest.fixture
async def loaded(redis: Any) -> tuple[Policy, Policy]:
    queue = Queue(redis)
    capped = make(
        "capped",
        11,
        rate={"limit": 5, "period": "1m", "burst": 2},
        dailyCap={"limit": 100, "timeZone": "Europe/Paris"},
    )
    paused = make("held", 12, rate={"limit": 1, "period": "1h"}, paused=True)
    for policy in (capped, paused):
        await hold(queue, policy, 10)
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
    assert (capped.state, capped.kind) == ("releasing", "policy")
    # 7 queued at 5 per minute after a spent burst: the last one goes in about 84 s.
    assert 70 < capped.drain_s < 90
    assert held.paused
    assert held.state == "paused"
    assert held.queued == 10
    assert held.released_today is None
    assert held.drain_s == float("inf")
    console = Console(width=160, record=True)
    console.print(status_table(list(rows.values())))
    text = console.export_text()
    assert "capped" in text
    assert "releasing" in text
    assert "paused" in text
    assert "∞" in text


async def test_each_state_as_the_engine_decides_it(redis: Any) -> None:
    """Paused, idle, a window closed now, a daily cap reached, releasing: the engine's own take
    releases nothing from the queues said to be stopped, and something from the releasing one."""
    queue = Queue(redis)
    closed_day = DAYS[(time.gmtime().tm_wday + 2) % 7]  # neither today nor (in any zone) now
    window = {
        "timeZone": "UTC",
        "windows": [{"days": [closed_day], "start": "00:00", "end": "24:00"}],
    }
    fast = {"limit": 100, "period": "1s", "burst": 0}
    policies = {
        "paused": make("held", 40, paused=True),
        "idle": make("empty", 40),
        "outside_window": make("windowed", 40, rate=fast, schedule=window),
        "daily_cap_reached": make("capped", 40, rate=fast, dailyCap={"limit": 2}),
        "releasing": make("open", 40, rate=fast),
    }
    for state, policy in policies.items():
        await hold(queue, policy, 0 if state == "idle" else 5)
    released: dict[str, int] = {}
    for _ in range(3):  # the cap's two go, then nothing more of it
        for r in (await queue.take()).released:
            released[r.policy] = released.get(r.policy, 0) + 1
        await asyncio.sleep(0.05)
    assert released.get("held", 0) == released.get("windowed", 0) == 0
    assert released["capped"] == 2
    assert released["open"] >= 1
    rows = {row.name: row for row in await StatusReader(redis).rows()}
    assert {state: rows[p.name].state for state, p in policies.items()} == {
        state: state for state in policies
    }
    assert rows["capped"].released_today == 2
    assert rows["capped"].queued == 3


async def test_a_hubspot_hold_after_a_429_is_waiting_for_hubspot(
    redis: Any,
    start_simulator: StartSimulator,
    store: TokenStore,
    session: aiohttp.ClientSession,
) -> None:
    queue = Queue(redis)
    policy = make("enrich", 21, rate={"limit": 100, "period": "1s"})
    other = make("enrich", 22, rate={"limit": 100, "period": "1s"})
    for p in (policy, other):
        await hold(queue, p, 3)
    taken = [r for r in (await queue.take()).released if r.portal_id == 21]
    running = await start_simulator()
    completer = await setup(running, store, session, redis, 21, taken)
    running.sim.set_faults(storm_until=time.time() + 60)
    result = await completer.complete(21, taken)
    assert result.retry_after > 1
    assert running.sim.portal(21).rate_limited == 1  # HubSpot answered one 429
    rows = {row.portal_id: row for row in await StatusReader(redis).rows()}
    assert rows[21].state == "waiting_for_hubspot"
    assert rows[22].state == "releasing"


async def test_a_spent_budget_is_waiting_for_hubspot(redis: Any) -> None:
    queue = Queue(redis)
    await hold(queue, make("enrich", 23), 2)
    budget = PortalBudget(redis, limit=3, window_s=30)
    reader = StatusReader(redis, HubSpotBudgetTerms(limit=3, window_s=30))
    for _ in range(2):
        await budget.release(23, await budget.try_take(23))
    assert [r.state for r in await reader.rows(23)] == ["releasing"]
    await budget.release(23, await budget.try_take(23))
    assert not (await budget.try_take(23)).granted
    assert [r.state for r in await reader.rows(23)] == ["waiting_for_hubspot"]


async def test_a_portal_without_tokens_is_waiting_for_hubspot(
    redis: Any, store: TokenStore, start_simulator: StartSimulator
) -> None:
    """The webhook's mirror of the installs (from the token store) says which portals have
    tokens; one that never installed, or uninstalled, cannot be completed."""
    queue = Queue(redis)
    for portal in (31, 32, 33):
        await hold(queue, make("enrich", portal), 2)
    reader = StatusReader(redis)
    # No webhook has mirrored the installs yet: nothing is judged from them.
    assert {r.state for r in await reader.rows()} == {"releasing"}
    running = await start_simulator()
    for portal in (31, 33):
        grant = running.sim.issue_tokens(portal)
        await store.save(portal, TokenGrant(grant["access_token"], grant["refresh_token"], 1800))
    await store.mark_uninstalled(33, "uninstalled in HubSpot")
    await InstalledPortals(redis, store.installations).refresh()
    states = {r.portal_id: r.state for r in await reader.rows()}
    assert states == {31: "releasing", 32: "waiting_for_hubspot", 33: "waiting_for_hubspot"}


def test_cli_prints_the_table(
    redis_server: RedisServer, loaded: tuple[Policy, Policy], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("REDIS_URL", redis_server.url)
    result = CliRunner().invoke(main, ["status"], env={"COLUMNS": "160"})
    assert result.exit_code == 0, result.output
    assert "capped" in result.output
    assert "held" in result.output
    assert "paused" in result.output


async def test_json_from_another_process_is_what_the_queue_holds(
    redis_server: RedisServer, redis: Any, loaded: tuple[Policy, Policy]
) -> None:
    env = {**os.environ, "REDIS_URL": redis_server.url, "LOG_FORMAT": "text"}
    done = subprocess.run(
        [*THROTTLE, "status", "--json"], env=env, capture_output=True, text=True, check=True
    )
    printed = json.loads(done.stdout)
    queue = Queue(redis)
    capped, held = loaded
    by_name = {q["name"]: q for q in printed["queues"]}
    assert set(by_name) == {"capped", "held"}
    for policy in (capped, held):
        stats = await queue.stats(policy)
        shown = by_name[policy.name]
        assert (shown["queued"], shown["in_flight"]) == (stats.depth, stats.in_flight)
        assert (shown["released_total"], shown["completed_total"]) == (stats.released, stats.acked)
        assert shown["failed_total"] == stats.failed + stats.expired
        assert shown["portal_id"] == policy.portal_id
    assert by_name["capped"]["released_today"] == 3
    assert by_name["held"] | {"oldest_wait_s": 0} == {
        "portal_id": 12,
        "name": "held",
        "kind": "policy",
        "rate": "1/1h",
        "paused": True,
        "state": "paused",
        "queued": 10,
        "in_flight": 0,
        "oldest_wait_s": 0,
        "released_total": 0,
        "released_today": None,
        "completed_total": 0,
        "failed_total": 0,
        "drain_s": None,
    }
    # The same function, in this process, gives the same figures (the wait has moved on).
    here = status_json(await StatusReader(redis).rows())
    strip = [
        {k: v for k, v in q.items() if k not in ("oldest_wait_s", "drain_s")}
        for q in here["queues"]
    ]
    assert strip == [
        {k: v for k, v in q.items() if k not in ("oldest_wait_s", "drain_s")}
        for q in printed["queues"]
    ]

    only = subprocess.run(
        [*THROTTLE, "status", "--json", "--portal", "11"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    assert [q["name"] for q in json.loads(only.stdout)["queues"]] == ["capped"]


@pytest.mark.parametrize(
    ("args", "named"),
    [
        (["--portal", "abc"], "'--portal'"),
        (["--portal", "-3"], "'--portal'"),
        (["--json", "--watch"], "--json"),
    ],
)
def test_bad_options_are_named(
    redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch, args: list[str], named: str
) -> None:
    monkeypatch.setenv("REDIS_URL", redis_server.url)
    result = CliRunner().invoke(main, ["status", *args])
    assert result.exit_code == 2
    assert named in result.output


def test_cli_names_the_missing_setting(monkeypatch: pytest.MonkeyPatch, tmp_path: Any) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("REDIS_URL", raising=False)
    result = CliRunner().invoke(main, ["status"])
    assert result.exit_code == 2
    assert "REDIS_URL" in result.output
