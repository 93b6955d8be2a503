"""Property: however HubSpot repeats and interleaves deliveries, each callback is queued once.

Random lists of callback ids with repeats are posted concurrently (duplicates racing each other
through the auto-pipelined enqueue); every answer is the same BLOCK, and the queue holds exactly
the distinct ids.
"""

from __future__ import annotations

import asyncio
import itertools

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.fixtures.webhook import Webhook, execution, policy

PORTALS = itertools.count(500_000)


@settings(
    max_examples=15,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    ids=st.lists(st.integers(min_value=0, max_value=12), min_size=1, max_size=40),
    concurrency=st.integers(min_value=1, max_value=16),
)
async def test_each_callback_is_queued_once(
    webhook: Webhook, ids: list[int], concurrency: int
) -> None:
    portal = next(PORTALS)  # a fresh portal (own queue) per example
    p = await webhook.add_policy(policy(portal=portal, expiration="PT6H"))
    semaphore = asyncio.Semaphore(concurrency)

    async def deliver(n: int) -> tuple[int, object]:
        async with semaphore:
            return await webhook.post_action(execution(f"ap-{portal}-{n}", portal=portal))

    answers = await asyncio.gather(*(deliver(n) for n in ids))
    expected = {"outputFields": {"hs_execution_state": "BLOCK", "hs_expiration_duration": "PT6H"}}
    assert all(answer == (200, expected) for answer in answers)
    assert await webhook.depth(p) == len(set(ids))
