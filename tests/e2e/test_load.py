"""The webhook at twice its sustainable rate for a minute: it sheds with 429 (which HubSpot
retries) instead of falling over — no 5xx, no dropped connection, /healthz up — and accepts
everything again once the load drops. Long: `make chaos` / `pytest -m chaos`."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from throttle_dev.chaos.harness import Harness
from throttle_dev.chaos.load import overload, table


@pytest.mark.chaos
@pytest.mark.slow
@pytest.mark.timeout(600)
def test_the_webhook_sheds_load_and_recovers(tmp_path_factory: pytest.TempPathFactory) -> None:
    name = f"chaos-load-{tmp_path_factory.getbasetemp().name}"
    harness = Harness(Path(__file__).resolve().parents[2] / ".local" / name)

    async def scenario() -> str:
        await harness.start(portals=1)
        try:
            result = await overload(harness, overload_s=60.0)
        finally:
            await harness.stop()
        print(table(result))
        assert not result.problems, result.problems
        over = result.phases[1]
        assert over.shed > 0, "twice the sustainable rate was accepted whole: nothing was tested"
        return table(result)

    asyncio.run(scenario())
