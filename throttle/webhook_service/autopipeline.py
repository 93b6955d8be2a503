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
from redis.exceptions import ResponseError

MAX_BATCH = 512


def _bulk(value: Any) -> bytes:
    data = value if isinstance(value, bytes) else str(value).encode()
    return b"$%d\r\n%b\r\n" % (len(data), data)


def pack(command: tuple[Any, ...]) -> bytes:
    """RESP encoding of one command (str/int/bytes arguments: what the engine's scripts pass).

    Done here rather than by redis-py's general packer, which costs several times more per
    argument and runs once per argument of every enqueue (19 of them)."""
    return b"*%d\r\n" % len(command) + b"".join([_bulk(arg) for arg in command])


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
        pool = self._redis.connection_pool
        delivered = 0
        try:
            connection = await pool.get_connection()
            try:
                await connection.send_packed_command(b"".join(pack(c) for c, _ in batch))
                for _, future in batch:
                    try:
                        reply = await connection.read_response()
                    except ResponseError as exc:  # an error reply: only its caller hears of it
                        reply = exc
                    delivered += 1
                    if future.done():  # the request was cancelled (client went away)
                        continue
                    if isinstance(reply, Exception):
                        future.set_exception(reply)
                    else:
                        future.set_result(reply)
            except BaseException:
                await connection.disconnect()  # replies may be half read: never reuse it
                raise
            finally:
                await pool.release(connection)
        except BaseException as exc:  # connection lost, cancelled: every waiter left hears of it
            for _, future in batch[delivered:]:
                if not future.done():
                    future.set_exception(exc)
            if not isinstance(exc, Exception):
                raise

    async def aclose(self) -> None:
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._redis.aclose()
