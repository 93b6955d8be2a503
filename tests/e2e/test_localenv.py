"""The local stack's servers pick their own ports; a port found free can be bound by another
process before the server binds it (a parallel test, any program on the machine). The server then
moves to another port instead of failing the run; a port the caller chose is never changed."""

from __future__ import annotations

import socket
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from throttle_dev.localenv import PostgresServer, RedisServer, ServiceError, free_port


def _occupy(port: int) -> socket.socket:
    """Bound, as a client's ephemeral port is: the server cannot bind it, and nothing answers."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", port))
    return sock


@pytest.fixture
def taken() -> Iterator[list[socket.socket]]:
    sockets: list[socket.socket] = []
    yield sockets
    for sock in sockets:
        sock.close()


def redis_answers(server: RedisServer) -> bool:
    """A Redis client reaches it, and a restart keeps the port its clients know."""
    if not server.sync_client().ping():
        return False
    server.restart()
    return bool(server.sync_client().ping())


def postgres_answers(server: PostgresServer) -> bool:
    return server.psql("select 1").strip() == "1"


@pytest.mark.parametrize(
    ("make", "answers"),
    [(RedisServer, redis_answers), (PostgresServer, postgres_answers)],
    ids=["redis", "postgres"],
)
def test_a_server_moves_off_a_port_taken_after_it_was_picked(
    tmp_path: Path, taken: list[socket.socket], make: Any, answers: Callable[[Any], bool]
) -> None:
    server = make(tmp_path / "data")
    picked = server.port
    taken.append(_occupy(picked))
    server.start()
    try:
        assert server.port != picked
        assert answers(server)
    finally:
        server.stop()


def test_a_port_the_caller_chose_is_never_changed(
    tmp_path: Path, taken: list[socket.socket]
) -> None:
    port = free_port()
    taken.append(_occupy(port))
    server = RedisServer(tmp_path / "redis", port=port)
    with pytest.raises(ServiceError, match="Address already in use"):
        server.start()
    server.stop()
