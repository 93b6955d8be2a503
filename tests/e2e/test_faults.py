"""The faults against the real processes: 0 lost, 0 duplicates, the rate held, no secret
logged. The same scenarios `make chaos` tabulates (devtools/throttle_dev/chaos/faults.py); the fast
ones run in `make test`, the long ones (`chaos` + `slow`) only in `make chaos` / `pytest -m chaos`.

All scenarios of a module share one stack (each gets its own portal and policy), so the fast
subset pays for starting Redis, PostgreSQL, the webhook, two dispatchers and the simulator once.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest

from throttle_dev.chaos.faults import FAULTS, Scenario, run
from throttle_dev.chaos.harness import Harness
from throttle_dev.chaos.table import plain

FAST = [s for s in FAULTS if not s.slow]
SLOW = [s for s in FAULTS if s.slow]


class Running:
    def __init__(self, harness: Harness, loop: asyncio.AbstractEventLoop) -> None:
        self.harness = harness
        self.loop = loop

    def check(self, scenario: Scenario) -> None:
        row = self.loop.run_until_complete(run(self.harness, scenario))
        print(plain([row]))
        for note in row.notes:
            print(f"  {note}")
        assert row.ok, f"{scenario.title}: " + "; ".join(row.problems)


@pytest.fixture(scope="module")
def chaos_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    # Under the repository (not /tmp): PostgreSQL runs as `nobody` when we are root and must be
    # able to reach its folder.
    name = f"chaos-test-{tmp_path_factory.getbasetemp().name}"
    root = Path(__file__).resolve().parents[2] / ".local" / name
    loop = asyncio.new_event_loop()
    harness = Harness(root)
    try:
        loop.run_until_complete(harness.start(portals=len(FAULTS)))
        yield Running(harness, loop)
    finally:
        loop.run_until_complete(harness.stop())
        loop.close()


@pytest.mark.chaos
@pytest.mark.timeout(300)
@pytest.mark.parametrize("scenario", FAST, ids=[s.key for s in FAST])
def test_fault(chaos_stack: Running, scenario: Scenario) -> None:
    chaos_stack.check(scenario)


@pytest.mark.chaos
@pytest.mark.slow
@pytest.mark.timeout(600)
@pytest.mark.parametrize("scenario", SLOW, ids=[s.key for s in SLOW])
def test_long_fault(chaos_stack: Running, scenario: Scenario) -> None:
    chaos_stack.check(scenario)
