"""A new policy is in force on every webhook process from the first execution after the config
API answered: created through webhook A, the first execution reaches webhook B (whose periodic
reload is up to 2 s away) within 10 ms, then 1,000 more. Every one is held (BLOCK) and HubSpot
sees them completed once each, at the policy's rate. Real processes: Redis, PostgreSQL, two
webhooks, two dispatchers and the simulator, started through the CLI; the same row `make chaos`
prints (`throttle_dev.chaos.policy_arrival`)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from throttle_dev.chaos.policy_arrival import MORE, harness_for, policy_arrival
from throttle_dev.chaos.table import plain


@pytest.mark.chaos
@pytest.mark.timeout(300)
def test_a_new_policy_holds_the_first_execution_on_another_webhook(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    # Under the repository (not /tmp): PostgreSQL runs as `nobody` when we are root.
    name = f"chaos-arrival-{tmp_path_factory.getbasetemp().name}"
    root = Path(__file__).resolve().parents[2] / ".local" / name
    harness = harness_for(root)

    async def run() -> None:
        await harness.start(portals=1)
        try:
            row = await policy_arrival(harness)
        finally:
            await harness.stop()
        print(plain([row]))
        assert row.ok, "; ".join(row.problems)
        assert (row.sent, row.blocked, row.completed) == (MORE + 1, MORE + 1, MORE + 1)

    asyncio.run(run())
