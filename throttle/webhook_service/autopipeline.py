"""Auto-pipelining for the webhook's Redis client: concurrent EVALSHAs share one network write.

Each action request still makes exactly one `enqueue` call and waits for exactly its own reply;
but the calls that concurrent requests issue in the same event-loop iteration are written to
Redis together (no MULTI: each script stays its own atomic unit) on one dedicated, pipelined
connection whose replies (parsed by hiredis) complete the callers' futures in order. Compared
with a redis-py command per request — pool checkout, a packer that inspects every argument, one
coroutine per reply — this more than halves the webhook's Redis cost per request (see
bench/ingest.py). The same idea as ioredis' `enableAutoPipelining`.

`AutoPipeline` wraps a `redis.asyncio.Redis` and is handed to the engine's `Queue` in its place:
`register_script` returns scripts bound to the wrapper, so the engine's code is unchanged; every
other command passes straight through to the wrapped client. A reply that is an error (e.g.
NOSCRIPT after a Redis restart) reaches its own caller only, which loads the script again
(`Scripts.call`, or a registered redis-py script; one SCRIPT LOAD for all callers at once) and
retries.

Failure: if the connection breaks, or a reply is late by more than the client's socket timeout,
the connection is dropped and every caller still waiting gets a ConnectionError (the webhook
answers 503 and HubSpot retries; the enqueue script's dedupe makes a retry of an enqueue that did
land harmless). The next call reconnects. TLS and unix-socket URLs use the wrapped client's pool
for the batch instead (same batching, redis-py's transport).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from typing import Any, cast

import hiredis
from redis.commands.core import AsyncScript
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, ResponseError

MAX_BATCH = 512
Waiter = tuple[float, asyncio.Future[Any]]


def _bulk(value: Any) -> bytes:
    data = value if isinstance(value, bytes) else str(value).encode()
    return b"$%d\r\n%b\r\n" % (len(data), data)


def pack(command: tuple[Any, ...]) -> bytes:
    """RESP encoding of one command (str/int/float/bytes arguments: what the engine's scripts
    pass), by hiredis' packer in C; any other type goes through `str()` here.

    Done here rather than by redis-py's general packer, which costs several times more per
    argument and runs once per argument of every enqueue (22 of them): hiredis packs an
    enqueue in ~2 µs, the Python loop in ~5 µs."""
    try:
        packed: bytes = hiredis.pack_command(command)
    except TypeError:
        return b"*%d\r\n" % len(command) + b"".join([_bulk(arg) for arg in command])
    return packed


def _error(reply: hiredis.ReplyError) -> ResponseError:
    message = str(reply)
    if message.startswith("NOSCRIPT"):
        return NoScriptError(message)
    return ResponseError(message)


class _Resp(asyncio.Protocol):
    """One pipelined connection: replies complete the waiting futures in the order sent."""

    def __init__(self) -> None:
        self.reader = hiredis.Reader()
        self.waiters: deque[Waiter] = deque()
        self.transport: asyncio.Transport | None = None
        self.lost = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # A stream transport (create_connection); uvloop's does not subclass asyncio.Transport.
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        self.reader.feed(data)
        waiters = self.waiters
        while (reply := self.reader.gets()) is not False:
            if not waiters:  # a reply nobody asked for: the stream is out of step
                self.abort(RedisConnectionError("unexpected reply from Redis"))
                return
            future = waiters.popleft()[1]
            if future.done():  # the request was cancelled (client went away)
                continue
            if isinstance(reply, hiredis.ReplyError):
                future.set_exception(_error(reply))
            else:
                future.set_result(reply)

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        self.fail(RedisConnectionError(f"connection to Redis lost ({exc or 'closed'})"))

    def fail(self, exc: Exception) -> None:
        while self.waiters:
            future = self.waiters.popleft()[1]
            if not future.done():
                future.set_exception(exc)

    def abort(self, exc: Exception) -> None:
        self.lost = True
        if self.transport is not None:
            self.transport.abort()
        self.fail(exc)

    def send(self, data: bytes, futures: list[asyncio.Future[Any]]) -> None:
        assert self.transport is not None
        now = time.monotonic()
        self.waiters.extend((now, f) for f in futures)
        self.transport.write(data)


class AutoPipeline:
    def __init__(self, redis: Any, max_batch: int = MAX_BATCH) -> None:
        from redis.asyncio.connection import Connection

        self._redis = redis
        self._max_batch = max_batch
        self._pending: list[tuple[bytes, asyncio.Future[Any]]] = []
        self._flush_scheduled = False
        self._tasks: set[asyncio.Task[None]] = set()
        self._loading: dict[str | bytes, asyncio.Future[Any]] = {}
        pool = redis.connection_pool
        self._kwargs: dict[str, Any] = dict(pool.connection_kwargs)
        self._direct = pool.connection_class is Connection  # plain TCP: our own connection
        self._timeout = float(self._kwargs.get("socket_timeout") or 5.0)
        self._resp: _Resp | None = None
        self._connecting: asyncio.Future[_Resp] | None = None
        self._watchdog: asyncio.Task[None] | None = None

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
            load = self.command("SCRIPT", "LOAD", script) if self._direct else None
            future = asyncio.ensure_future(load or self._redis.script_load(script))
            self._loading[script] = future
            future.add_done_callback(lambda _: self._loading.pop(script, None))
        return await asyncio.shield(future)

    def evalsha(self, sha: str, numkeys: int, *args: Any) -> asyncio.Future[Any]:
        return self._submit(pack(("EVALSHA", sha, numkeys, *args)))

    def command(self, *args: Any) -> asyncio.Future[Any]:
        """Any command, sent with the current batch; await the future for its reply (hiredis'
        raw value). A future, not a coroutine: one frame less per request."""
        return self._submit(pack(args))

    def _submit(self, packed: bytes) -> asyncio.Future[Any]:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        self._pending.append((packed, future))
        if len(self._pending) >= self._max_batch:
            self._flush()
        elif not self._flush_scheduled:
            self._flush_scheduled = True
            loop.call_soon(self._flush)
        return future

    # --- sending ---------------------------------------------------------------------------------
    def _flush(self) -> None:
        self._flush_scheduled = False
        batch, self._pending = self._pending, []
        if not batch:
            return
        resp = self._resp
        if resp is not None and not resp.lost:
            resp.send(b"".join([data for data, _ in batch]), [f for _, f in batch])
            return
        self._spawn(self._send_after_connect(batch) if self._direct else self._send_pooled(batch))

    def _spawn(self, coro: Any) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _send_after_connect(self, batch: list[tuple[bytes, asyncio.Future[Any]]]) -> None:
        try:
            resp = await self._connected()
        except Exception as exc:
            exc = RedisConnectionError(f"cannot connect to Redis ({type(exc).__name__}: {exc})")
            for _, future in batch:
                if not future.done():
                    future.set_exception(exc)
            return
        resp.send(b"".join([data for data, _ in batch]), [f for _, f in batch])

    async def _connected(self) -> _Resp:
        if self._resp is not None and not self._resp.lost:
            return self._resp
        if self._connecting is None:
            self._connecting = asyncio.ensure_future(self._connect())
            self._connecting.add_done_callback(lambda _: setattr(self, "_connecting", None))
        return await asyncio.shield(self._connecting)

    async def _connect(self) -> _Resp:
        loop = asyncio.get_running_loop()
        kw = self._kwargs
        connect_timeout = float(kw.get("socket_connect_timeout") or self._timeout)
        host, port = kw.get("host", "localhost"), int(kw.get("port", 6379))
        async with asyncio.timeout(connect_timeout):
            _, resp = await loop.create_connection(_Resp, host, port)
        setup: list[tuple[Any, ...]] = []
        if kw.get("password"):
            username = kw.get("username")
            setup.append(
                ("AUTH", username, kw["password"]) if username else ("AUTH", kw["password"])
            )
        if int(kw.get("db") or 0):
            setup.append(("SELECT", int(kw["db"])))
        if setup:
            futures = [loop.create_future() for _ in setup]
            resp.send(b"".join(pack(c) for c in setup), futures)
            try:
                async with asyncio.timeout(connect_timeout):
                    await asyncio.gather(*futures)
            except BaseException:
                resp.abort(RedisConnectionError("Redis refused AUTH/SELECT"))
                raise
        self._resp = resp
        if self._watchdog is None or self._watchdog.done():
            self._watchdog = asyncio.create_task(self._watch())
        return resp

    async def _watch(self) -> None:
        """Drop a connection whose oldest unanswered command is older than the socket timeout."""
        while True:
            await asyncio.sleep(min(1.0, self._timeout / 2))
            resp = self._resp
            if resp is None or resp.lost or not resp.waiters:
                continue
            if time.monotonic() - resp.waiters[0][0] > self._timeout:
                resp.abort(RedisConnectionError(f"no reply from Redis in {self._timeout:g}s"))

    async def _send_pooled(self, batch: list[tuple[bytes, asyncio.Future[Any]]]) -> None:
        """TLS / unix socket: the same batch over a pooled redis-py connection."""
        pool = self._redis.connection_pool
        delivered = 0
        try:
            connection = await pool.get_connection()
            try:
                await connection.send_packed_command(b"".join(d for d, _ in batch))
                for _, future in batch:
                    try:
                        reply = await connection.read_response()
                    except ResponseError as exc:
                        reply = exc
                    delivered += 1
                    if future.done():
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
        except BaseException as exc:
            for _, future in batch[delivered:]:
                if not future.done():
                    future.set_exception(exc)
            if not isinstance(exc, Exception):
                raise

    async def aclose(self) -> None:
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._watchdog is not None:
            self._watchdog.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watchdog
        if self._resp is not None and self._resp.transport is not None:
            self._resp.transport.close()
        await self._redis.aclose()
