"""A task that lives exactly as long as a `with` block: the webhook's refresh loops and a token
refresh's lock renewal each need one, and each must end, awaited, however the block ends — a
task left running past its owner keeps writing after the owner gave up what it guarded."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Coroutine
from typing import Any


@contextlib.asynccontextmanager
async def running(coro: Coroutine[Any, Any, Any], name: str) -> AsyncIterator[asyncio.Task[Any]]:
    """Run `coro` as a task for the duration of the block; cancel and await it on the way out."""
    task = asyncio.create_task(coro, name=name)
    try:
        yield task
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
