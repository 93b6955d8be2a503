"""Refuse HubSpot's requests at the connection, before aiohttp parses them, while overloaded.

Why: offered twice what a pod sustains, the webhook accepted a fifth of its sustainable rate, and
those it accepted waited seconds (bench/RESULTS.md, goodput under overload). `LoadShedder.refusal`
answered 429 only once aiohttp had parsed the request and built its Request, task and route: a
refusal cost about half an accepted request, so refusing the excess took the whole core and every
request queued behind the refusals in the socket buffers. Refusing must cost far less than
serving, or shedding cannot free the core for the requests it keeps.

How: `ShedProtocol` sits between the transport and aiohttp's own protocol. It frames what it
passes on (the end of the head, Content-Length) so it knows where each request starts; when a new
`POST /api/hubspot/action` (or `/options`) starts while `LoadShedder.overloaded()` says so, and
aiohttp has nothing in progress on that connection, it writes a 429 built once (the same JSON
body and Retry-After as the handler's refusal) and drops the request's bytes. The connection
stays open, so the refused client's retry costs no new connection. The kernel still holds what
the pod has not read yet: refusing cheaply is what keeps the loop reading it within milliseconds.

Anything it cannot frame with a few byte searches (a head split across reads, chunked bodies,
`Expect: 100-continue`, an upgrade, HTTP/1.0) makes it a plain pass-through for that connection:
aiohttp answers as before, and the handler's own shedding still applies. Health, metrics and
the config API are never refused here (as in shedding.py).
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from aiohttp import web
from aiohttp.web_protocol import RequestHandler

from throttle.webhook_service.errors import error_body
from throttle.webhook_service.shedding import OVERLOADED_DETAIL, LoadShedder

HOT_PATHS = ((b"POST /api/hubspot/action", "action"), (b"POST /api/hubspot/options", "options"))
"""HubSpot's routes (the ones shedding.py sheds), with the endpoint label of their metrics."""
HEAD_END = b"\r\n\r\n"


def refusal_bytes(retry_after_s: int, *, close: bool) -> bytes:
    """The whole 429 response, as `LoadShedder.refusal` would answer it."""
    body = json.dumps(error_body("overloaded", OVERLOADED_DETAIL)).encode()
    head = (
        "HTTP/1.1 429 Too Many Requests\r\n"
        "Content-Type: application/json; charset=utf-8\r\n"
        f"Content-Length: {len(body)}\r\n"
        f"Retry-After: {retry_after_s}\r\n" + ("Connection: close\r\n" if close else "") + "\r\n"
    )
    return head.encode() + body


def header(head: bytes, name: bytes) -> bytes | None:
    """The value of header `name` (lowercase, with its colon) in a lowercased head; None if
    absent; b"," when it appears twice (aiohttp judges such a request)."""
    at = head.find(b"\r\n" + name)
    if at < 0:
        return None
    start = at + 2 + len(name)
    end = head.find(b"\r\n", start)
    if head.find(b"\r\n" + name, start) >= 0:
        return b","
    return (head[start:end] if end >= 0 else head[start:]).strip()


def body_length(head: bytes) -> int | None:
    """The body's length in bytes after this lowercased head; None when framing it needs more
    than a Content-Length (then the connection is left to aiohttp)."""
    line_end = head.find(b"\r\n")
    if not (head[:line_end] if line_end >= 0 else head).endswith(b" http/1.1"):
        return None
    for name in (b"transfer-encoding:", b"expect:", b"upgrade:"):
        if header(head, name) is not None:
            return None
    value = header(head, b"content-length:")
    if value is None:
        return 0
    return int(value) if value.isdigit() else None


class ShedProtocol(asyncio.Protocol):
    """One connection: aiohttp's protocol behind it, the early 429 in front of it."""

    __slots__ = (
        "answers",
        "body_left",
        "dropping",
        "forwarded",
        "framed",
        "inner",
        "shedder",
        "transport",
    )

    def __init__(
        self, inner: RequestHandler, shedder: LoadShedder, answers: tuple[bytes, bytes]
    ) -> None:
        self.inner = inner
        self.shedder = shedder
        self.answers = answers
        """The 429 keeping the connection open, and the one closing it."""
        self.transport: asyncio.Transport | None = None
        self.body_left = 0
        """Bytes of the current request's body still to come."""
        self.dropping = False
        """Whether those bytes belong to a refused request (dropped) or to aiohttp's."""
        self.framed = True
        """False once this connection carried something not framed here: pass-through."""
        self.forwarded = False
        """Whether aiohttp has been given any of this connection's bytes."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.inner.connection_made(transport)

    def connection_lost(self, exc: BaseException | None) -> None:
        self.inner.connection_lost(exc)
        self.shedder.release_held(self.inner)

    def pause_writing(self) -> None:
        self.inner.pause_writing()

    def resume_writing(self) -> None:
        self.inner.resume_writing()

    def eof_received(self) -> None:
        self.inner.eof_received()  # aiohttp's keeps nothing open: the transport closes

    def data_received(self, data: bytes) -> None:
        if not self.framed:
            self.inner.data_received(data)
            return
        handled = 0  # bytes before it are forwarded below or were dropped
        at, size = 0, len(data)
        while at < size:
            if self.body_left:
                step = min(self.body_left, size - at)
                self.body_left -= step
                at += step
                if self.dropping:
                    handled = at
                continue
            end = data.find(HEAD_END, at)
            head = data[at:end].lower() if end >= 0 else b""
            length = body_length(head) if end >= 0 else None
            if length is None:
                self.framed = False
                break
            endpoint = self.hot(data, at) if handled == at else None
            if endpoint is not None and self.idle() and self.shedder.shed(endpoint):
                close = header(head, b"connection:") == b"close"
                assert self.transport is not None  # connection_made came first
                self.transport.write(self.answers[close])
                if close:
                    self.transport.close()
                    return
                self.dropping = True
                handled = end + len(HEAD_END)
            else:
                self.dropping = False
                if endpoint is not None and end + len(HEAD_END) + length <= size:
                    # Admitted with its body here: its slot is taken now. One whose body is
                    # still on its way takes it in its handler, once read (shedding.py).
                    self.shedder.hold(self.inner)
            self.body_left = length
            at = end + len(HEAD_END)
        if handled < size:
            self.forwarded = True
            self.inner.data_received(data[handled:] if handled else data)

    @staticmethod
    def hot(data: bytes, at: int) -> str | None:
        """The endpoint of the HubSpot route a request starting at `at` asks for, if any."""
        for prefix, endpoint in HOT_PATHS:
            if data.startswith(prefix, at) and data[at + len(prefix) : at + len(prefix) + 1] in (
                b" ",
                b"?",
            ):
                return endpoint
        return None

    def idle(self) -> bool:
        """Whether aiohttp has no request of this connection in hand: only then may a response
        be written here without overtaking its answer to an earlier (pipelined) request.

        aiohttp waits on `_waiter` exactly while its queue of parsed requests is empty and the
        previous one is answered; a connection that never forwarded anything is idle too (its
        handler task may not have started yet). tests/webhook/test_overload.py pins this on
        the installed aiohttp with pipelined requests.

        Not while the client leaves its answers unread (writing paused): refusals written
        faster than they are read would pile up in memory; aiohttp's own writer waits."""
        if self.inner.writing_paused:
            return False
        if not self.forwarded:
            return True
        waiter = getattr(self.inner, "_waiter", None)
        return waiter is not None and not waiter.done()


class ShedSite(web.BaseSite):
    """A TCP site whose connections each pass through a `ShedProtocol`."""

    __slots__ = ("_host", "_port", "_shedder")

    def __init__(
        self,
        runner: web.BaseRunner,
        host: str,
        port: int,
        shedder: LoadShedder,
        *,
        backlog: int = 128,
    ) -> None:
        super().__init__(runner, backlog=backlog)
        self._host, self._port, self._shedder = host, port, shedder

    @property
    def name(self) -> str:
        return f"http://{self._host}:{self._port}"

    async def start(self) -> None:
        await super().start()
        server = self._runner.server
        assert server is not None  # the runner was set up (BaseSite checks)
        shedder = self._shedder
        retry_after = shedder.retry_after_s
        answers = (
            refusal_bytes(retry_after, close=False),
            refusal_bytes(retry_after, close=True),
        )

        def connection() -> Any:
            return ShedProtocol(server(), shedder, answers)

        self._server = await asyncio.get_running_loop().create_server(
            connection, self._host, self._port, backlog=self._backlog, reuse_address=True
        )
