"""Overload: the webhook at twice its sustainable rate for a minute, then back to normal.

1. Sustainable rate: a closed loop (a fixed number of HubSpot requests in flight, each sent when
   the previous answered) for a few seconds; its throughput with every answer a 200 is what the
   webhook sustains on this machine, with the load generator sharing the CPU.
2. Overload: an open loop at twice that rate for `overload_s` — requests leave on schedule
   whether or not earlier ones were answered, as HubSpot's do. The webhook must keep answering:
   200 for what it accepts, 429 (which HubSpot retries) for what it sheds, never a 5xx, and
   `/healthz` must stay up.
3. Recovery: after a 10 s pause, half the sustainable rate for a while; every request must be
   accepted again.

Requests are signed executions for a paused policy, so the dispatchers stay idle and the figures
are the webhook's own. Every body is built and signed before the clock starts.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from throttle.hubspot.signatures import sign_v3
from throttle_dev.chaos.harness import Harness, Rate
from throttle_dev.demo.measure import percentile


@dataclass
class Phase:
    name: str
    offered_per_s: float
    duration_s: float
    sent: int = 0
    statuses: Counter[str] = field(default_factory=Counter)
    latencies_ms: list[float] = field(default_factory=list)
    health_failures: int = 0
    webhook_cpu: float = 0.0
    """The webhook process' CPU (user + system) per wall second during the phase (1.0 = a core)."""

    @property
    def accepted(self) -> int:
        return self.statuses.get("200", 0)

    @property
    def shed(self) -> int:
        return self.statuses.get("429", 0)

    @property
    def server_errors(self) -> int:
        return sum(n for s, n in self.statuses.items() if s.isdigit() and int(s) >= 500)

    @property
    def failures(self) -> int:
        """Answers that are neither 200 nor 429: 5xx, other 4xx, timeouts, refused connections."""
        return self.sent - self.accepted - self.shed

    def row(self) -> dict[str, Any]:
        return {
            "phase": self.name,
            "offered/s": round(self.offered_per_s),
            "seconds": round(self.duration_s),
            "sent": self.sent,
            "200": self.accepted,
            "429": self.shed,
            "other": self.failures,
            "accepted/s": round(self.accepted / self.duration_s) if self.duration_s else 0,
            "p50 ms": round(percentile(self.latencies_ms, 50), 1),
            "p99 ms": round(percentile(self.latencies_ms, 99), 1),
            "health failures": self.health_failures,
            "webhook CPU": f"{self.webhook_cpu:.0%}",
        }


class Load:
    def __init__(self, harness: Harness, portal: int, policy: str) -> None:
        self.h = harness
        self.portal = portal
        self.policy = policy
        self.url = harness.stack.action_url
        self.path = "/api/hubspot/action"
        self.secret = harness.stack.settings["hubspot_client_secret"]

    def requests(self, n: int) -> list[tuple[bytes, dict[str, str]]]:
        """`n` signed executions (v3, timestamp now: valid for the next five minutes)."""
        now_ms = int(time.time() * 1000)
        out = []
        for i in range(n):
            body = json.dumps(
                {
                    "callbackId": f"load-{uuid.uuid4().hex}",
                    "origin": {"portalId": self.portal, "actionDefinitionId": 1},
                    "context": {"source": "WORKFLOWS", "workflowId": 1},
                    "object": {"objectId": i, "objectType": "CONTACT"},
                    "inputFields": {"policy": self.policy},
                }
            ).encode()
            headers = {
                "Content-Type": "application/json",
                "X-HubSpot-Signature-v3": sign_v3(self.secret, "POST", self.url, body, now_ms),
                "X-HubSpot-Request-Timestamp": str(now_ms),
            }
            out.append((body, headers))
        return out

    async def _one(
        self, session: aiohttp.ClientSession, phase: Phase, body: bytes, headers: dict[str, str]
    ) -> None:
        started = time.perf_counter()
        try:
            async with session.post(self.url, data=body, headers=headers) as response:
                await response.read()
                status = str(response.status)
        except (TimeoutError, aiohttp.ClientError) as exc:
            status = type(exc).__name__
        phase.statuses[status] += 1
        if status == "200":
            phase.latencies_ms.append((time.perf_counter() - started) * 1000)

    async def closed_loop(self, concurrency: int, duration_s: float) -> Phase:
        phase = Phase("sustainable (closed loop)", 0.0, duration_s)
        host, port = self.h.stack.webhook_url.removeprefix("http://").split(":")
        pool = RawPool(host, int(port), concurrency)
        pending = [
            raw_request(self.path, host, body, headers)
            for body, headers in self.requests(int(duration_s * CLOSED_LOOP_CEILING))
        ]
        deadline = time.monotonic() + duration_s

        async def worker() -> None:
            while time.monotonic() < deadline and pending:
                raw = pending.pop()
                phase.sent += 1
                await pool.send(raw, time.monotonic(), phase)

        started = time.monotonic()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        phase.duration_s = time.monotonic() - started
        await pool.close()
        phase.offered_per_s = phase.sent / phase.duration_s
        return phase

    async def open_loop(self, name: str, rate: float, duration_s: float) -> Phase:
        """Send on schedule whatever happens to earlier requests (HubSpot's traffic does not
        wait for our answers). Each request goes out on an idle keep-alive connection, or a new
        one (up to `MAX_CONNECTIONS`, then it waits for one: that wait counts in its latency).
        A minimal HTTP/1.1 client keeps the generator's CPU well below the server's."""
        phase = Phase(name, rate, duration_s)
        pending = self.requests(int(rate * duration_s) + 1)
        host, port = self.h.stack.webhook_url.removeprefix("http://").split(":")
        pool = RawPool(host, int(port), MAX_CONNECTIONS)
        raws = [raw_request(self.path, host, body, headers) for body, headers in pending]
        tasks: set[asyncio.Task[None]] = set()
        async with self._session() as session:
            health = asyncio.create_task(self._watch_health(session, phase, duration_s))
            started = time.monotonic()
            for i, raw in enumerate(raws):
                due = started + i / rate
                delay = due - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
                if time.monotonic() - started >= duration_s:
                    break
                phase.sent += 1
                task = asyncio.create_task(pool.send(raw, due, phase))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
            await asyncio.gather(*list(tasks))
            await health
        await pool.close()
        return phase

    async def _watch_health(
        self, session: aiohttp.ClientSession, phase: Phase, span: float
    ) -> None:
        deadline = time.monotonic() + span
        while time.monotonic() < deadline:
            try:
                async with session.get(
                    f"{self.h.stack.webhook_url}/healthz",
                    timeout=aiohttp.ClientTimeout(total=5),
                ) as response:
                    if response.status != 200:
                        phase.health_failures += 1
            except (TimeoutError, aiohttp.ClientError):
                phase.health_failures += 1
            await asyncio.sleep(1.0)

    @staticmethod
    def _session() -> aiohttp.ClientSession:
        connector = aiohttp.TCPConnector(limit=2000, force_close=False)
        return aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=10))


MAX_CONNECTIONS = 4000
CLOSED_LOOP_CEILING = 15_000
"""Requests per second the closed loop has bodies for (above any rate one process reaches)."""
RECOVERY_GRACE_S = 10.0
"""Between the overload and the recovery phase: the backlog in socket buffers drains and the
admitted share climbs back (AIMD) before "every request is accepted again" is judged."""
REQUEST_TIMEOUT_S = 10.0


def raw_request(path: str, host: str, body: bytes, headers: dict[str, str]) -> bytes:
    lines = [f"POST {path} HTTP/1.1", f"Host: {host}", f"Content-Length: {len(body)}"]
    lines += [f"{k}: {v}" for k, v in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


class RawPool:
    """Keep-alive HTTP/1.1 connections, one request at a time each; opened on demand."""

    def __init__(self, host: str, port: int, limit: int) -> None:
        self.host, self.port = host, port
        self.idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
        self.slots = asyncio.Semaphore(limit)
        self.open: set[asyncio.StreamWriter] = set()

    async def send(self, raw: bytes, due: float, phase: Phase) -> None:
        async with self.slots:
            try:
                async with asyncio.timeout(REQUEST_TIMEOUT_S):
                    status = await self._exchange(raw)
            except TimeoutError:
                status = "timeout"
            except (OSError, asyncio.IncompleteReadError, ValueError) as exc:
                status = type(exc).__name__
        phase.statuses[status] += 1
        if status == "200":
            phase.latencies_ms.append((time.monotonic() - due) * 1000)

    async def _exchange(self, raw: bytes) -> str:
        if self.idle:
            reader, writer = self.idle.pop()
        else:
            reader, writer = await asyncio.open_connection(self.host, self.port)
            self.open.add(writer)
        try:
            writer.write(raw)
            head = await reader.readuntil(b"\r\n\r\n")
            status = head.split(b" ", 2)[1].decode()
            length = 0
            close = False
            for line in head.split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value.strip())
                elif name.strip().lower() == b"connection" and b"close" in value.lower():
                    close = True
            if length:
                await reader.readexactly(length)
        except BaseException:
            self.open.discard(writer)
            writer.close()
            raise
        if close:
            self.open.discard(writer)
            writer.close()
        else:
            self.idle.append((reader, writer))
        return status

    async def close(self) -> None:
        for writer in list(self.open):
            writer.close()
        self.open.clear()
        self.idle.clear()


@dataclass
class LoadResult:
    phases: list[Phase]

    @property
    def problems(self) -> list[str]:
        found = []
        sustainable, overload, recovery = self.phases
        if sustainable.failures or sustainable.shed:
            found.append("the closed loop was not all 200: the sustainable rate is overstated")
        if overload.server_errors:
            found.append(f"{overload.server_errors} 5xx answers under overload")
        if overload.failures:
            found.append(f"{overload.failures} requests under overload got neither 200 nor 429")
        if overload.health_failures:
            found.append(f"/healthz failed {overload.health_failures} times under overload")
        if recovery.failures or recovery.shed:
            found.append(f"after the overload {recovery.shed + recovery.failures} were not 200")
        return found


async def overload(
    h: Harness, overload_s: float = 60.0, concurrency: int = 32, calibrate_s: float = 8.0
) -> LoadResult:

    portal = h.portal()
    policy = "load-paused"
    await h.put_policy(portal, policy, Rate(limit=1, period_s=1, burst=0), paused=True)
    load = Load(h, portal, policy)
    pid = h.stack.components["webhook"].pid
    with cpu_of(pid) as cpu:
        sustainable = await load.closed_loop(concurrency, calibrate_s)
    sustainable.webhook_cpu = cpu.share
    rate = sustainable.accepted / sustainable.duration_s
    with cpu_of(pid) as cpu:
        over = await load.open_loop("2x sustainable (open loop)", 2 * rate, overload_s)
    over.webhook_cpu = cpu.share
    await asyncio.sleep(RECOVERY_GRACE_S)
    with cpu_of(pid) as cpu:
        recovery = await load.open_loop("recovery at 0.5x", 0.5 * rate, min(20.0, overload_s))
    recovery.webhook_cpu = cpu.share
    return LoadResult([sustainable, over, recovery])


@dataclass
class CpuShare:
    share: float = 0.0


def _cpu_seconds(pid: int | None) -> float:
    """utime + stime of a process from /proc (Linux); 0 where unavailable."""
    if pid is None:
        return 0.0
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@contextlib.contextmanager
def cpu_of(pid: int | None) -> Iterator[CpuShare]:
    result = CpuShare()
    cpu, wall = _cpu_seconds(pid), time.monotonic()
    yield result
    elapsed = time.monotonic() - wall
    result.share = (_cpu_seconds(pid) - cpu) / elapsed if elapsed > 0 else 0.0


def table(result: LoadResult) -> str:
    rows = [p.row() for p in result.phases]
    header = list(rows[0])
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(r[k]) for k in header) + " |" for r in rows]
    verdict = "ok" if not result.problems else "FAIL: " + "; ".join(result.problems)
    return "\n".join(lines) + f"\n\nVerdict: {verdict}\n"
