"""A rolling upgrade under traffic, from the previous release to this code: 0 lost, 0 sent twice.

The previous release is release 0.1.0, commit d5a55d6 (CHANGELOG.md), materialized from the
repository's own history with a virtualenv of its own (throttle_dev.releases; built once under
~/.cache/throttle/releases/). Real processes throughout, started through each release's own CLI:
Redis, PostgreSQL, the HubSpot simulator, `throttle migrate`, webhooks and dispatchers.

1. old:          the old release alone (webhook + 2 dispatchers) installs three portals, takes
                 their policies through its config API, and holds portal A's traffic.
2. side by side: this code's `throttle migrate` (the chart's pre-upgrade Job), then a new webhook
                 and 2 new dispatchers start beside the old ones (migrating Redis' layout before
                 they serve); portal B's traffic goes to the old and the new webhook at once.
3. old stopped:  portal C's traffic goes to the new webhook while the old webhook and one old
                 dispatcher get SIGTERM and the other SIGKILL, mid-flight (its leases run out
                 and the new dispatchers take its executions over).
Then everything drains, and the verdict is HubSpot's (the simulator's): every execution answered
BLOCK completed exactly once, none lost, none sent twice, no window above limit + burst — per
phase in which it arrived, printed as a table.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from throttle.engine.layout import CURRENT_LAYOUT, LayoutState, read_layout
from throttle_dev.chaos.harness import FaultRow, Harness, Rate, Traffic
from throttle_dev.releases import materialize

PREVIOUS_RELEASE = "d5a55d6"  # release 0.1.0
RATE = Rate(limit=15, period_s=1, burst=5)
TRAFFIC = Traffic(executions=150, rate_per_s=50.0)
LEASE_S = 12.0  # a completion deadline (10 s) fits in it with a margin


def verdict(rows: list[FaultRow]) -> str:
    lines = [
        "| phase | sent | blocked | completed | failed | lost | sent twice | max/window |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    lines += [
        f"| {r.fault} | {r.sent} | {r.blocked} | {r.completed} | {r.failed} | {r.lost} | "
        f"{r.duplicates} | {r.max_window}/{r.allowed} |"
        for r in rows
    ]
    return "\n".join(lines)


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_rolling_upgrade_from_the_previous_release_loses_and_doubles_nothing(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    old = materialize(PREVIOUS_RELEASE)  # once per machine; minutes the first time
    # Under the repository (not /tmp): PostgreSQL runs as `nobody` when we are root.
    root = (
        Path(__file__).resolve().parents[2]
        / ".local"
        / f"upgrade-{tmp_path_factory.getbasetemp().name}"
    )
    harness = Harness(root, dispatchers=2, lease_seconds=LEASE_S, release=old)
    stack = harness.stack

    async def layout_now() -> LayoutState:
        client = stack.redis.client()
        try:
            return await read_layout(client)
        finally:
            await client.aclose()

    async def run() -> list[FaultRow]:
        await harness.start(portals=3)
        try:
            portals = {phase: harness.portal() for phase in ("old", "side by side", "old stopped")}
            for portal in portals.values():
                await harness.put_policy(portal, "upgrade", RATE)
            drives: dict[str, list[dict[str, object]]] = {}

            # 1. the old release alone
            drives["old"] = [await harness.drive(portals["old"], "upgrade", TRAFFIC)]

            # the old code knows no layout key: proof that it, not this code, ran so far
            assert not (await layout_now()).stamped

            # 2. the new release beside it
            await asyncio.to_thread(stack.migrate)
            stack.add_webhook("webhook-new")
            for name in ("dispatcher-new-1", "dispatcher-new-2"):
                stack.add_dispatcher(name)
            for name in ("webhook-new", "dispatcher-new-1", "dispatcher-new-2"):
                await asyncio.to_thread(stack.start_component, name)
            layout = await layout_now()
            assert (layout.version, layout.stamped) == (CURRENT_LAYOUT, True)
            half = Traffic(executions=TRAFFIC.executions // 2, rate_per_s=TRAFFIC.rate_per_s / 2)
            drives["side by side"] = list(
                await asyncio.gather(
                    harness.drive(portals["side by side"], "upgrade", half, "webhook"),
                    harness.drive(portals["side by side"], "upgrade", half, "webhook-new"),
                )
            )

            # 3. the old release stopped while traffic goes on
            driving = asyncio.create_task(
                harness.drive(portals["old stopped"], "upgrade", TRAFFIC, "webhook-new")
            )
            await asyncio.sleep(1.0)
            await asyncio.to_thread(stack.kill, "dispatcher-2")  # mid-flight: leases held
            await asyncio.to_thread(stack.terminate, "dispatcher-1")
            await asyncio.to_thread(stack.terminate, "webhook")
            drives["old stopped"] = [await driving]

            # drain, then HubSpot's verdict per phase
            rows = []
            for phase, portal in portals.items():
                await harness.settle(portal, timeout_s=180)
                merged = {"sent": sum(int(str(d.get("sent", 0))) for d in drives[phase])}
                rows.append(await harness.judge(phase, portal, "upgrade", RATE, merged, False))
            return rows
        finally:
            await harness.stop()

    rows = asyncio.run(run())
    print(f"\nrolling upgrade {PREVIOUS_RELEASE} (release 0.1.0) -> this code\n{verdict(rows)}")
    assert [r.problems for r in rows] == [[], [], []], verdict(rows)
    assert all(r.blocked == r.completed for r in rows), verdict(rows)
