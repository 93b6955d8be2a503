"""A component's loops end when they are cancelled, even when the cancellation meets a wake-up.

On Python 3.11 `asyncio.wait_for` returns normally when the cancellation arrives in the same
turn as the awaited event: the loop goes round again, and the app's shutdown (which awaits it)
hangs. An OAuth install wakes the installed-portals loop exactly so, and a test server's
shutdown timed out on it under load.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from throttle import tasks
from throttle.webhook_service.portals import InstalledPortals


async def _ends(task: asyncio.Task[Any]) -> bool:
    done, _ = await asyncio.wait({task}, timeout=2.0)
    return task in done


async def test_a_cancellation_as_the_event_is_set_ends_the_loop() -> None:
    event = asyncio.Event()
    rounds = 0

    async def loop() -> None:
        nonlocal rounds
        while True:
            await tasks.wait(event, 60.0)
            event.clear()
            rounds += 1

    task = asyncio.create_task(loop())
    await asyncio.sleep(0)  # the loop is waiting
    event.set()
    task.cancel()  # the same turn as the wake-up
    assert await _ends(task)
    assert task.cancelled()
    assert rounds == 0


async def test_the_wait_says_whether_the_event_came() -> None:
    event = asyncio.Event()
    assert await tasks.wait(event, 0.01) is False
    event.set()
    assert await tasks.wait(event, 60.0) is True


async def test_the_installed_portals_loop_ends_when_an_install_wakes_it_at_shutdown(
    redis: Any,
) -> None:
    portals = InstalledPortals(redis, None)
    async with (
        asyncio.timeout(5.0),  # a loop that ignores its cancellation: TimeoutError here
        tasks.running(portals.run(60.0), name="installed portals") as task,
    ):
        await asyncio.sleep(0)
        portals.note_installed(1234)  # what the OAuth callback does
    # `running` cancelled and awaited it on the way out: it ended.
    assert task.done()


@pytest.mark.parametrize("seconds", [0.0, 0.02])
async def test_a_timeout_with_no_event_returns_after_it(seconds: float) -> None:
    started = asyncio.get_running_loop().time()
    assert await tasks.wait(asyncio.Event(), seconds) is False
    assert asyncio.get_running_loop().time() - started >= seconds
