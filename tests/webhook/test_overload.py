"""Overload, as HubSpot's side of the socket sees it: refused requests get 429 with Retry-After on
the same connection, refusing costs the pod a fraction of serving (so shedding frees the core for
the requests it keeps), answers stay in order, and `/healthz` answers through a burst of
connections.

The webhook runs as `throttle webhook` does (`run_webhook` on uvloop, its own listening site);
the overload is real: Redis holds every write (`CLIENT PAUSE ... WRITE`), so the requests
admitted stay in flight and the rest are over the in-flight cap. bench/overload.py measures the
same under an open-loop flood (bench/RESULTS.md, goodput under overload).
"""

from __future__ import annotations

import json
import socket
import struct
import time
from collections.abc import Iterator

import pytest
import redis as redis_sync

from tests.fixtures.served_webhook import Answers, ServedWebhook, StartServedWebhook

REFUSED = 1500
ACCEPTED = 300


@pytest.fixture
def paused(redis_server: object) -> Iterator[redis_sync.Redis]:
    """A client to pause Redis' writes with; unpaused after the test whatever happens."""
    client = redis_sync.Redis.from_url(redis_server.url)  # type: ignore[attr-defined]
    yield client
    client.execute_command("CLIENT", "UNPAUSE")
    client.close()


def status(answer: bytes) -> int:
    return int(answer.split(b" ", 2)[1])


def body(answer: bytes) -> dict[str, object]:
    return json.loads(answer.partition(b"\r\n\r\n")[2])  # type: ignore[no-any-return]


def answered_action(answer: bytes) -> bool:
    """An action's answer: queued or passed on (200), or refused as overloaded (429)."""
    if status(answer) == 429:
        return body(answer)["error"] == "overloaded"
    return status(answer) == 200 and "outputFields" in body(answer)


def hold_slots(webhook: ServedWebhook, slots: int) -> list[socket.socket]:
    """`slots` accepted requests left waiting on paused Redis (their connections returned),
    once a further request is refused: the pod is then at its in-flight cap."""
    held = []
    for _ in range(slots):
        sock = webhook.connect()
        sock.sendall(webhook.action())
        held.append(sock)
    deadline = time.monotonic() + 10
    while status(webhook.request(webhook.action())) != 429:
        assert time.monotonic() < deadline, "the held requests never filled the in-flight cap"
        time.sleep(0.05)
    return held


def test_refusing_costs_a_fraction_of_serving(
    start_served_webhook: StartServedWebhook, paused: redis_sync.Redis
) -> None:
    """Offered twice its sustainable rate, the webhook accepted a fifth of it: aiohttp parsed
    and dispatched every request before the shedder refused it, a refusal cost about half an
    accepted request, and the refusals took the core. Now they are refused at the connection."""
    webhook = start_served_webhook(webhook_max_inflight=1, webhook_shed_lag_ms=0)
    paused.execute_command("CLIENT", "PAUSE", 60_000, "WRITE")
    held = hold_slots(webhook, 1)
    conn = webhook.connect()
    answers = Answers(conn)
    before = webhook.cpu_seconds()
    for i in range(REFUSED):
        raw = webhook.action()
        if i % 10 == 0:  # now and then the body comes in a later write, as a slow link sends it
            head, _, rest = raw.partition(b"\r\n\r\n")
            conn.sendall(head + b"\r\n\r\n")
            conn.sendall(rest)
        else:
            conn.sendall(raw)
        refused = answers.next()
        assert status(refused) == 429, refused[:300]
        assert b"\r\nRetry-After: 1\r\n" in refused
        assert body(refused)["error"] == "overloaded"
    refusing = (webhook.cpu_seconds() - before) / REFUSED

    paused.execute_command("CLIENT", "UNPAUSE")
    for sock in held:
        assert status(Answers(sock).next()) == 200
        sock.close()
    before = webhook.cpu_seconds()
    for _ in range(ACCEPTED):  # the same connection: the refusals left it usable
        conn.sendall(webhook.action())
        accepted = answers.next()
        assert status(accepted) == 200, accepted[:300]
        assert body(accepted)["outputFields"]["hs_execution_state"] == "BLOCK"  # type: ignore[index]
    serving = (webhook.cpu_seconds() - before) / ACCEPTED
    conn.close()
    assert refusing < 0.3 * serving, (
        f"a refusal cost {refusing * 1e6:.0f} µs of the webhook's CPU, "
        f"an accepted request {serving * 1e6:.0f} µs"
    )


def test_answers_stay_in_order_when_a_later_request_is_refused(
    start_served_webhook: StartServedWebhook, paused: redis_sync.Redis
) -> None:
    """A request that arrives while an earlier one on its connection is still being served
    is not refused ahead of that one's answer (HTTP/1.1 answers in order)."""
    webhook = start_served_webhook(webhook_max_inflight=2, webhook_shed_lag_ms=0)
    paused.execute_command("CLIENT", "PAUSE", 60_000, "WRITE")
    conn = webhook.connect()
    answers = Answers(conn)
    conn.sendall(webhook.action("cb-first"))
    held = hold_slots(webhook, 1)  # the first one and this one: the cap
    conn.sendall(webhook.action("cb-second"))  # over the cap, behind the first one
    # and three at once: refused, served, refused
    conn.sendall(webhook.action() + b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n" + webhook.action())
    time.sleep(0.3)
    paused.execute_command("CLIENT", "UNPAUSE")
    first = answers.next()
    assert status(first) == 200, first[:300]
    assert body(first)["outputFields"]["hs_execution_state"] == "BLOCK"  # type: ignore[index]
    second = answers.next()  # admitted or not once it is read: but after the first
    assert answered_action(second), second[:300]
    rest = [answers.next() for _ in range(3)]
    assert status(rest[1]) == 200, rest[1][:300]
    assert body(rest[1]) == {"status": "ok"}
    for answer in (rest[0], rest[2]):
        assert answered_action(answer), answer[:300]
    for sock in held:
        sock.close()
    conn.close()


def test_healthz_answers_through_a_burst_of_connections(
    start_served_webhook: StartServedWebhook,
) -> None:
    """A burst of new connections while the loop is busy: beyond the listen backlog the kernel
    dropped the SYNs, the kubelet's probe among them, which then waited for the client's SYN
    retry (1 s, then 3 s) — longer than the probe's 1-3 s timeout."""
    webhook = start_served_webhook()
    loop = webhook.loop
    assert loop is not None
    burst: list[socket.socket] = []
    loop.call_soon_threadsafe(time.sleep, 0.5)  # the loop busy: nothing accepted meanwhile
    time.sleep(0.05)
    try:
        for _ in range(400):
            sock = socket.socket()
            sock.setblocking(False)
            sock.connect_ex(("127.0.0.1", webhook.port))
            burst.append(sock)
        started = time.monotonic()
        answer = webhook.request(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        waited = time.monotonic() - started
    finally:
        for sock in burst:
            sock.close()
    assert status(answer) == 200
    assert waited < 0.9, f"/healthz answered after {waited:.2f} s"


def test_clients_that_vanish_leave_no_slot_taken(
    start_served_webhook: StartServedWebhook, paused: redis_sync.Redis
) -> None:
    """A slot is taken at the connection as soon as a request is admitted there; a client that
    disconnects before its request is served (HubSpot giving up on a slow pod, with one more
    request queued behind the one in service) must not keep it, or the pod would refuse
    everything once enough clients had left."""
    webhook = start_served_webhook(webhook_max_inflight=4, webhook_shed_lag_ms=0)
    paused.execute_command("CLIENT", "PAUSE", 60_000, "WRITE")
    for _ in range(6):
        sock = webhook.connect()
        sock.sendall(webhook.action())  # in service: waits for Redis
        time.sleep(0.05)
        sock.sendall(webhook.action())  # queued behind it on the same connection
        time.sleep(0.05)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.close()  # reset, not a polite close
    paused.execute_command("CLIENT", "UNPAUSE")
    time.sleep(0.5)
    conn = webhook.connect()
    answers = Answers(conn)
    for _ in range(10):
        conn.sendall(webhook.action())
        answer = answers.next()
        assert status(answer) == 200, answer[:300]
    conn.close()


def test_what_the_connection_cannot_frame_is_left_to_aiohttp(
    start_served_webhook: StartServedWebhook, paused: redis_sync.Redis
) -> None:
    """A chunked body cannot be skipped with a byte count: that connection goes to aiohttp,
    whose handler still sheds it. A client asking to close gets its 429, then the close."""
    webhook = start_served_webhook(webhook_max_inflight=1, webhook_shed_lag_ms=0)
    paused.execute_command("CLIENT", "PAUSE", 60_000, "WRITE")
    held = hold_slots(webhook, 1)
    raw = webhook.action()
    head, _, payload = raw.partition(b"\r\n\r\n")
    head = head.replace(f"Content-Length: {len(payload)}".encode(), b"Transfer-Encoding: chunked")
    chunked = head + b"\r\n\r\n" + f"{len(payload):x}\r\n".encode() + payload + b"\r\n0\r\n\r\n"
    conn = webhook.connect()
    answers = Answers(conn)
    for _ in range(3):
        conn.sendall(chunked)
        refused = answers.next()
        assert status(refused) == 429, refused[:300]
        assert b"\r\nRetry-After: 1\r\n" in refused
    conn.sendall(webhook.action())  # then framed requests on it: still answered in step
    assert status(answers.next()) == 429
    conn.close()

    closing = webhook.connect()
    closing.sendall(webhook.action(Connection="close"))
    answer = Answers(closing).next()
    assert status(answer) == 429, answer[:300]
    assert closing.recv(100) == b"", "the connection is closed after the answer"
    closing.close()
    for sock in held:
        sock.close()
