"""Ingest benchmark: the real action endpoint vs a bare aiohttp endpoint, same generator, same run.

    .venv/bin/python bench/ingest.py [--duration 8] [--connections 32] [--rounds 2]
    .venv/bin/python bench/ingest.py --appendfsync   # the cost of REDIS_DURABILITY=strict

What runs (all real processes on this machine):
- Redis (AOF on, as the chart configures it) and PostgreSQL (migrated; the portals are recorded
  as installed in `hubspot_portals`, as the OAuth flow would), from `throttle_dev.localenv`;
- the webhook as `throttle webhook` (the production entry point and defaults: JSON log lines to
  a file, access log of errors only) with a global default policy applied through `reconcile`;
- the same webhook with WEBHOOK_ACCESS_LOG=all (a JSON line for every request);
- the first webhook again, every request carrying an inline rate instead of naming no policy
  (`webhook, inline rates`: 1,000 inline queues, each written on its first execution);
- a bare aiohttp app answering the same JSON to the same path (no verification, no Redis, no log).

The load generator is this process: raw asyncio HTTP/1.1 keep-alive connections (uvloop) sending
requests signed v3 exactly as HubSpot does (unique callbackId each, 20 portals, 50 workflows),
the same bytes for every target, signed just before each run. Each server runs alone on the
last CPU; the generator and Redis share the others (`--no-pin` leaves placement to the kernel).
Two measurements per target:
- peak: a closed loop on `--connections` connections for `--duration` s → requests/s, p50, p99;
- half of peak: an open loop at 50% of that target's peak rate; latency counted from each
  request's scheduled send time (no coordinated omission) → p50, p99.
With `--appendfsync` the two webhook targets are instead the same webhook on two Redis servers
side by side: `appendfsync everysec` (the default) and `appendfsync always` with
REDIS_DURABILITY=strict (BLOCK only once the write is on disk; docs/durability.md).
Rounds alternate targets; the best round per target is reported. Prints a table; never passes or
fails on time (numbers go to bench/RESULTS.md by hand).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import gc
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ACTION_PATH = "/api/hubspot/action"
PORTALS = [100_000 + i for i in range(20)]
BARE_ANSWER = {"outputFields": {"hs_execution_state": "BLOCK", "hs_expiration_duration": "P7D"}}


# --- the bare endpoint (run as `bench/ingest.py --bare-port N`) ---------------------------------
def serve_bare(port: int) -> None:
    from aiohttp import web

    body = json.dumps(BARE_ANSWER).encode()

    async def action(request: web.Request) -> web.Response:
        await request.read()
        return web.Response(body=body, content_type="application/json")

    from throttle.webhook_service.app import freeze_heap, new_event_loop

    app = web.Application()
    app.router.add_post(ACTION_PATH, action)
    # The same event loop as `throttle webhook` (uvloop when installed) and the same frozen
    # start-up heap, so only the per-request work differs.
    app.on_startup.append(freeze_heap)
    web.run_app(
        app, host="127.0.0.1", port=port, access_log=None, print=None, loop=new_event_loop()
    )


# --- the generator ----------------------------------------------------------------------------
class Signer:
    """Builds one signed HubSpot execution request per call (unique callbackId)."""

    def __init__(
        self, secret: str, public_url: str, host: str, inputs: dict[str, str] | None = None
    ) -> None:
        from throttle.hubspot.signatures import sign_v3

        self.inputs = inputs if inputs is not None else {"policy": ""}

        self.sign = sign_v3
        self.secret = secret
        self.url = public_url + ACTION_PATH
        self.host = host
        self.prefix = uuid.uuid4().hex[:8]
        self.n = 0

    def __call__(self) -> bytes:
        self.n += 1
        n = self.n
        portal = PORTALS[n % len(PORTALS)]
        body = json.dumps(
            {
                "callbackId": f"ap-{self.prefix}-{n}",
                "origin": {
                    "portalId": portal,
                    "actionDefinitionId": 77,
                    "actionDefinitionVersion": 1,
                },
                "context": {"source": "WORKFLOWS", "workflowId": 5000 + n % 50},
                "object": {
                    "objectId": n,
                    "objectType": "CONTACT",
                    "properties": {"email": "a@b.c"},
                },
                "inputFields": self.inputs,
            },
            separators=(",", ":"),
        ).encode()
        ts = int(time.time() * 1000)
        signature = self.sign(self.secret, "POST", self.url, body, ts)
        head = (
            f"POST {ACTION_PATH} HTTP/1.1\r\nHost: {self.host}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
            f"X-HubSpot-Signature-v3: {signature}\r\nX-HubSpot-Request-Timestamp: {ts}\r\n\r\n"
        )
        return head.encode() + body


class Signed:
    """Requests signed ahead of a run, so that signing (a JSON dump and an HMAC each) is not
    done on the CPU the generator shares with Redis while the servers are measured; HubSpot's
    requests are built on HubSpot's machines. Signed on the fly once the stock runs out; the
    5-minute timestamp window leaves plenty of time."""

    def __init__(self, sign: Signer, count: int) -> None:
        self.sign = sign
        self.stock = [sign() for _ in range(count)]
        self.stock.reverse()

    def __call__(self) -> bytes:
        return self.stock.pop() if self.stock else self.sign()


class Connection:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def open(cls, port: int) -> Connection:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        return cls(reader, writer)

    async def roundtrip(self, request: bytes) -> int:
        self.writer.write(request)
        head = await self.reader.readuntil(b"\r\n\r\n")
        status = int(head[9:12])
        lower = head.lower()
        i = lower.find(b"content-length:")
        length = int(lower[i + 15 : lower.index(b"\r\n", i)]) if i >= 0 else 0
        if length:
            await self.reader.readexactly(length)
        return status

    def close(self) -> None:
        self.writer.close()


@dataclass
class Result:
    requests: int
    errors: int
    seconds: float
    latencies: list[float]
    cpu_us: float = float("nan")
    """Server process CPU (user + system) per request, microseconds."""

    @property
    def rate(self) -> float:
        """Answered 200 per second (a shed 429 is not throughput)."""
        return (self.requests - self.errors) / self.seconds

    def pct(self, q: float) -> float:
        if not self.latencies:
            return float("nan")
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000


async def closed_loop(port: int, make: Callable[[], bytes], conns: int, duration: float) -> Result:
    connections = [await Connection.open(port) for _ in range(conns)]
    latencies: list[float] = []
    errors = 0
    stop = time.perf_counter() + duration

    async def worker(c: Connection) -> None:
        nonlocal errors
        while (now := time.perf_counter()) < stop:
            status = await c.roundtrip(make())
            latencies.append(time.perf_counter() - now)
            if status != 200:
                errors += 1

    started = time.perf_counter()
    await asyncio.gather(*(worker(c) for c in connections))
    elapsed = time.perf_counter() - started
    for c in connections:
        c.close()
    return Result(len(latencies), errors, elapsed, latencies)


async def open_loop(
    port: int, make: Callable[[], bytes], rate: float, conns: int, duration: float
) -> Result:
    """Request i is due at start + i/rate, whatever happened to earlier ones; each connection
    takes the next due request when free. Latency counts from the due time, so a server that
    falls behind shows it (no coordinated omission)."""
    connections = [await Connection.open(port) for _ in range(conns)]
    latencies: list[float] = []
    errors = 0
    total = int(rate * duration)
    next_index = 0
    started = time.perf_counter()

    async def worker(c: Connection) -> None:
        nonlocal errors, next_index
        while next_index < total:
            due = started + next_index / rate
            next_index += 1
            delay = due - time.perf_counter()
            if delay > 0.0002:
                await asyncio.sleep(delay)
            status = await c.roundtrip(make())
            latencies.append(time.perf_counter() - due)
            if status != 200:
                errors += 1

    await asyncio.gather(*(worker(c) for c in connections))
    elapsed = time.perf_counter() - started
    for c in connections:
        c.close()
    return Result(len(latencies), errors, elapsed, latencies)


# --- the environment ---------------------------------------------------------------------------
def wait_http(url: str, proc: subprocess.Popen[bytes], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"process for {url} exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=1) as response:  # noqa: S310  # nosec B310
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.2)
    raise SystemExit(f"{url} not ready after {timeout}s")


def free_port() -> int:
    from throttle_dev.localenv import free_port as fp

    return fp()


async def prepare(redis_url: str, database_url: str) -> None:
    import asyncpg
    from redis.asyncio import Redis

    from throttle.engine.policy import Policy
    from throttle.engine.queue import Queue
    from throttle.engine.registry import reconcile
    from throttle.history.migrations import migrate

    await migrate(database_url)
    conn = await asyncpg.connect(database_url)
    try:
        await conn.executemany(
            "INSERT INTO hubspot_portals (portal_id) VALUES ($1) ON CONFLICT DO NOTHING",
            [(p,) for p in PORTALS],
        )
    finally:
        await conn.close()
    redis = Redis.from_url(redis_url)
    try:
        policy = Policy.model_validate(
            {
                "name": "default",
                "portalId": 0,
                "rate": {"limit": 100, "period": "1m"},
                "expiration": "P7D",
                "scope": "PerWorkflow",
            }
        )
        queue = Queue(redis)
        revision = (await reconcile(queue, policy)).revision
        # Each portal's copy of the default, written up front as the operator writes it on the
        # portal's first execution: the runs measure the steady state, not that first moment.
        for portal in PORTALS:
            await queue.apply_policy(policy.for_portal(portal).with_revision(revision))
    finally:
        await redis.aclose()


def base_settings(redis_url: str, database_url: str, secret: str) -> dict[str, str]:
    """A webhook's settings with fresh keys and tokens; `secret` is the HubSpot client secret
    the generator signs with."""
    return {
        "redis_url": redis_url,
        "database_url": database_url,
        "hubspot_client_id": str(uuid.uuid4()),
        "hubspot_client_secret": secret,
        "encryption_key": base64.b64encode(secrets.token_bytes(32)).decode(),
        "secret_key_base": secrets.token_urlsafe(48),
        "throttle_api_token": secrets.token_urlsafe(32),
        "host": "127.0.0.1",
        "log_format": "json",
    }


def settings_env(settings: dict[str, str]) -> dict[str, str]:
    # PYTHONPATH too: a worktree's bench must run the worktree's webhook, not the installed one.
    kept = ("PATH", "HOME", "LANG", "TMPDIR", "PYTHONPATH")
    env = {k: v for k, v in os.environ.items() if k in kept}
    env["PYTHONUNBUFFERED"] = "1"
    env.update({k.upper(): v for k, v in settings.items()})
    return env


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--duration", type=float, default=8.0)
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument(
        "--no-pin",
        dest="pin",
        action="store_false",
        help="let the kernel place processes (default: each server on the last CPU, alone)",
    )
    parser.add_argument(
        "--appendfsync",
        action="store_true",
        help="compare the webhook on Redis with appendfsync everysec vs always (strict)",
    )
    parser.add_argument("--bare-port", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.pin = args.pin and can_pin()
    if args.bare_port:
        serve_bare(args.bare_port)
        return

    from throttle.webhook_service.app import new_event_loop
    from throttle_dev.localenv import PostgresServer, RedisServer

    root = Path(tempfile.mkdtemp(prefix="throttle-bench-ingest-"))
    redis = RedisServer(root / "redis", appendonly=True).start()
    servers = [redis]
    if args.appendfsync:
        servers.append(
            RedisServer(root / "redis-always", appendonly=True, appendfsync="always").start()
        )
    postgres = PostgresServer(root / "postgres").start()
    postgres.create_database("throttle")
    procs: list[subprocess.Popen[bytes]] = []
    try:
        secret = str(uuid.uuid4())
        targets: dict[str, Target] = {}
        base = base_settings(redis.url, postgres.url_for("throttle"), secret)
        for server in servers:
            asyncio.run(prepare(server.url, base["database_url"]))
        public_url = "http://127.0.0.1:8080"  # what HubSpot signed; every target is "behind" it
        webhooks: tuple[tuple[str, str, dict[str, str]], ...] = (
            ("webhook", redis.url, {}),
            ("webhook, access log all", redis.url, {"webhook_access_log": "all"}),
        )
        if args.appendfsync:
            webhooks = (
                ("webhook, everysec", redis.url, {}),
                ("webhook, always strict", servers[1].url, {"redis_durability": "strict"}),
            )
        for name, redis_url, extra in webhooks:
            port = free_port()
            env = settings_env(
                {
                    **base,
                    "redis_url": redis_url,
                    "public_url": public_url,
                    "port": str(port),
                    **extra,
                }
            )
            log = (root / f"{name.split(',')[0]}-{port}.log").open("wb")
            procs.append(
                subprocess.Popen(
                    [sys.executable, "-m", "throttle.cli.main", "webhook"],
                    env=env,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    cwd=root,
                )
            )
            wait_http(f"http://127.0.0.1:{port}/readyz", procs[-1])
            targets[name] = Target(port, procs[-1].pid, redis_url)
            if name == "webhook":  # the same process, every request with an inline rate
                targets["webhook, inline rates"] = Target(port, procs[-1].pid, redis_url, True)
        bare = free_port()
        procs.append(subprocess.Popen([sys.executable, __file__, "--bare-port", str(bare)]))
        deadline = time.monotonic() + 20
        while True:
            try:
                asyncio.run(_probe(bare))
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        targets = {"bare aiohttp": Target(bare, procs[-1].pid, redis.url), **targets}
        if args.pin:
            server_cpu = {max(os.sched_getaffinity(0))}
            others = os.sched_getaffinity(0) - server_cpu
            for target in targets.values():
                pin(target.pid, server_cpu)
            pin(os.getpid(), others)  # the generator
            for server in servers:
                pin(redis_pid(server.url), others)
        time.sleep(6)  # let the webhooks' installed-portals refresher read PostgreSQL once
        # The generator on the servers' loop (uvloop): the cheaper it is, the less it takes from
        # the CPU it shares with Redis, and the more the figures are the servers'.
        with asyncio.Runner(loop_factory=new_event_loop) as runner:
            rows = runner.run(measure(targets, secret, public_url, args))
        report(rows, args)
    finally:
        for proc in procs:
            proc.send_signal(signal.SIGTERM)
        for proc in procs:
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
        for server in servers:
            server.stop()
        postgres.stop()
        shutil.rmtree(root, ignore_errors=True)


async def _probe(port: int) -> None:
    c = await Connection.open(port)
    c.close()


@dataclass
class Target:
    port: int
    pid: int
    redis_url: str
    inline: bool = False
    """Its requests carry an inline rate (docs/policies.md, "Inline rates"): one inline queue
    per portal and workflow (1,000), each created by its first execution."""


INLINE_INPUTS = {"rate_count": "5", "rate_every": "1", "rate_unit": "seconds"}


def can_pin() -> bool:
    return hasattr(os, "sched_setaffinity") and len(os.sched_getaffinity(0)) >= 2


def pin(pid: int, cpus: set[int]) -> None:
    """Every thread of process `pid` onto `cpus` (Linux: affinity is per thread)."""
    for task in Path(f"/proc/{pid}/task").iterdir():
        os.sched_setaffinity(int(task.name), cpus)


def redis_info(url: str, section: str) -> dict[str, Any]:
    import redis

    client = redis.Redis.from_url(url)
    try:
        return dict(client.info(section))
    finally:
        client.close()


def redis_pid(url: str) -> int:
    return int(redis_info(url, "server")["process_id"])


def process_cpu(pid: int) -> float:
    """User + system CPU seconds of a process so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def redis_forks(url: str) -> int:
    return int(redis_info(url, "stats")["total_forks"])


def redis_cpu(url: str) -> float:
    info = redis_info(url, "cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


@dataclass
class Row:
    peak: Result
    half: Result
    half_rate: float
    redis_cpu_us: float
    half_forks: int
    """Redis forks (AOF rewrites) during the half-load run: each pauses Redis, then its child
    competes for the CPU Redis and the generator share; the usual source of a late tail."""


async def measure(
    targets: dict[str, Target],
    secret: str,
    public_url: str,
    args: argparse.Namespace,
) -> dict[str, Row]:
    plain = Signer(secret, public_url, "127.0.0.1:8080")
    inline = Signer(secret, public_url, "127.0.0.1:8080", INLINE_INPUTS)

    def signer(target: Target) -> Signer:
        return inline if target.inline else plain

    # The generator's own full GC passes (~50,000 objects imported) would stall every request
    # in flight, whichever target it measures: keep them off the measured latencies.
    gc.collect()
    gc.freeze()
    # Warm up every target (connections, caches, scripts), then alternate rounds.
    stock = 50_000
    for target in targets.values():
        warm = await closed_loop(target.port, signer(target), args.connections, 1.5)
        stock = max(stock, int(warm.rate * args.duration * 1.3))
    best: dict[str, Result] = {}
    redis_us: dict[str, float] = {}
    for _ in range(args.rounds):
        for name, target in targets.items():
            signed = Signed(signer(target), stock)
            cpu, rcpu = process_cpu(target.pid), redis_cpu(target.redis_url)
            result = await closed_loop(target.port, signed, args.connections, args.duration)
            served = max(1, result.requests)
            result.cpu_us = (process_cpu(target.pid) - cpu) / served * 1e6
            if name not in best or result.rate > best[name].rate:
                best[name] = result
                redis_us[name] = (redis_cpu(target.redis_url) - rcpu) / served * 1e6
    rows: dict[str, Row] = {}
    for name, target in targets.items():
        half_rate = best[name].rate / 2
        signed = Signed(signer(target), int(half_rate * args.duration) + 1)
        forks = redis_forks(target.redis_url)
        half = await open_loop(target.port, signed, half_rate, args.connections, args.duration)
        forks = redis_forks(target.redis_url) - forks
        rows[name] = Row(best[name], half, half_rate, redis_us[name], forks)
    return rows


def report(rows: dict[str, Row], args: argparse.Namespace) -> None:
    bare = rows["bare aiohttp"].peak
    print()
    print(
        f"Ingest: signed HubSpot executions, {args.connections} connections, "
        f"{args.duration:.0f} s per run, best of {args.rounds} rounds; generator in-process "
        f"(Python, uvloop); {os.cpu_count()} CPUs: "
        + (
            "each server alone on the last CPU, generator and Redis on the others"
            if args.pin
            else "not pinned (generator, servers and Redis share them)"
        )
    )
    print()
    header = (
        f"{'target':<24}{'peak req/s':>11}{'p50 ms':>8}{'p99 ms':>8}{'ratio':>7}"
        f"{'cpu us/req':>11}{'redis us':>9}{'half req/s':>11}{'p50 ms':>8}{'p99 ms':>8}"
        f"{'max ms':>8}{'forks':>6}{'non-200':>8}"
    )
    print(header)
    print("-" * len(header))
    for name, row in rows.items():
        errors = row.peak.errors + row.half.errors
        print(
            f"{name:<24}{row.peak.rate:>11.0f}{row.peak.pct(0.5):>8.2f}{row.peak.pct(0.99):>8.2f}"
            f"{row.peak.rate / bare.rate:>7.2f}{row.peak.cpu_us:>11.0f}{row.redis_cpu_us:>9.0f}"
            f"{row.half.rate:>11.0f}{row.half.pct(0.5):>8.2f}{row.half.pct(0.99):>8.2f}"
            f"{row.half.pct(1.0):>8.1f}{row.half_forks:>6}{errors:>8}"
        )
    print()
    print("ratio      = peak req/s answered 200 / bare aiohttp's (target: >= 0.5)")
    print("cpu us/req = server process CPU per request at peak (load-independent cost)")
    print("redis us   = Redis server CPU per request at peak")
    print("half       = open loop at 50% of that target's peak; latency from scheduled send time")
    print("forks      = Redis forks (AOF rewrites) during the half-load run")


if __name__ == "__main__":
    main()
