"""Auto-pipelining for the webhook's Redis client: concurrent EVALSHAs share one network write.

Each action request still makes exactly one `enqueue` call and waits for exactly its own reply;
but the calls that many concurrent requests issue in the same event-loop iteration are sent as one
pipeline (no MULTI: each script stays its own atomic unit) over one pooled connection. That spends
one pool checkout, one socket write and one read loop per batch instead of per request — the
bulk of redis-py's per-command cost — and so roughly doubles how many executions one webhook
process can accept (see bench/ingest.py). The same idea as ioredis' `enableAutoPipelining`.

`AutoPipeline` wraps a `redis.asyncio.Redis` and is handed to the engine's `Queue` in its place:
`register_script` returns scripts bound to the wrapper, so the engine's code is unchanged, and
every other command passes straight through. A reply that is an error (e.g. NOSCRIPT after a
Redis restart) is raised to its own caller only, where redis-py's Script reloads and retries.
"""

from __future__ import annotations

import asyncio
from typing import Any

from redis.commands.core import AsyncScript

MAX_BATCH = 512


class AutoPipeline:
    def __init__(self, redis: Any, max_batch: int = MAX_BATCH) -> None:
        self._redis = redis
        self._max_batch = max_batch
        self._pending: list[tuple[tuple[Any, ...], asyncio.Future[Any]]] = []
        self._flush_scheduled = False
        self._tasks: set[asyncio.Task[None]] = set()
        self._loading: dict[str | bytes, asyncio.Future[Any]] = {}

    def __getattr__(self, name: str) -> Any:
        return getattr(self._redis, name)

    @property
    def wrapped(self) -> Any:
        return self._redis

    def register_script(self, script: str | bytes) -> AsyncScript:
        return AsyncScript(self, script)  # type: ignore[arg-type]

    async def script_load(self, script: str | bytes) -> Any:
        """One SCRIPT LOAD however many callers met NOSCRIPT at once (after a Redis restart)."""
        future = self._loading.get(script)
        if future is None:
            future = asyncio.ensure_future(self._redis.script_load(script))
            self._loading[script] = future
            future.add_done_callback(lambda _: self._loading.pop(script, None))
        return await asyncio.shield(future)

    async def evalsha(self, sha: str, numkeys: int, *args: Any) -> Any:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        self._pending.append((("EVALSHA", sha, numkeys, *args), future))
        if len(self._pending) >= self._max_batch:
            self._flush()
        elif not self._flush_scheduled:
            self._flush_scheduled = True
            loop.call_soon(self._flush)
        return await future

    def _flush(self) -> None:
        self._flush_scheduled = False
        batch, self._pending = self._pending, []
        if not batch:
            return
        task = asyncio.create_task(self._send(batch))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _send(self, batch: list[tuple[tuple[Any, ...], asyncio.Future[Any]]]) -> None:
        try:
            if len(batch) == 1:
                ((command, future),) = batch
                results: list[Any] = [await self._redis.execute_command(*command)]
            else:
                pipe = self._redis.pipeline(transaction=False)
                for command, _ in batch:
                    pipe.execute_command(*command)
                results = await pipe.execute(raise_on_error=False)
        except BaseException as exc:  # connection lost, cancelled: every waiter hears of it
            for _, future in batch:
                if not future.done():
                    future.set_exception(exc)
            if not isinstance(exc, Exception):
                raise
            return
        for (_, future), result in zip(batch, results, strict=True):
            if future.done():  # the request was cancelled (client went away)
                continue
            if isinstance(result, Exception):
                future.set_exception(result)
            else:
                future.set_result(result)

    async def aclose(self) -> None:
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._redis.aclose()
