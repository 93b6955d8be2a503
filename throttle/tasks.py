"""A task that lives exactly as long as a `with` block, and a wait that a cancellation always
ends: the webhook's refresh loops, a token refresh's lock renewal and every component's sleep
between rounds need them, and each must end, awaited, however its owner ends — a task left
running past its owner keeps writing after the owner gave up what it guarded, and a pod whose
loop ignores its cancellation never finishes shutting down."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from typing import Any


@contextlib.asynccontextmanager
async def running(coro: Coroutine[Any, Any, Any], name: str) -> AsyncIterator[asyncio.Task[Any]]:
    """Run `coro` as a task for the duration of the block; cancel and await it on the way out."""
    task = asyncio.create_task(coro, name=name)
    try:
        yield task
    finally:
        task.cancel()
        try:
            await task
        except asyncio.CancelledError:
            # The task's own end is expected; the owner's cancellation (a timeout around the
            # block, a shutdown) must go on up, not stop here.
            current = asyncio.current_task()
            if current is not None and current.cancelling():
                raise


async def wait(event: asyncio.Event, seconds: float) -> bool:
    """Until `event` is set or `seconds` pass; True when it was set.

    Not `asyncio.wait_for`: on Python 3.11 it returns normally when the cancellation arrives
    just as the event is set, so a loop built on it goes round again instead of ending, and
    `running` above waits for it forever. `asyncio.timeout` lets the cancellation through.
    """
    try:
        async with asyncio.timeout(seconds):
            await event.wait()
    except TimeoutError:
        return False
    return True


async def periodically(
    what: str, seconds: float, step: Callable[[], Awaitable[Any]], log: logging.Logger
) -> None:
    """`step()` every `seconds`, until cancelled: a background loop that neither a Redis or
    network error (logged as a warning) nor a bug (logged with its traceback) ends early."""
    from redis.exceptions import RedisError

    while True:
        await asyncio.sleep(seconds)
        try:
            await step()
        except (RedisError, OSError) as exc:
            log.warning("%s: %s", what, exc)
        except Exception:
            log.exception("%s failed; continuing", what)
