"""HubSpot completion: how many API calls, how long, how many 429s, to complete released actions.

The HubSpot completer (batches of ≤100 within each portal's shared budget, 429 hold, in-flight
cap) against the HubSpot simulator, with real Redis (budget, locks) and PostgreSQL (encrypted
tokens). Everything runs on this host; the simulator adds the latency it is told to.

Scenarios:
- one portal, many callbacks (the batch packing);
- many portals at once (one completer call per portal, concurrently, as a dispatcher does);
- a 429 storm hitting three dispatcher pods that complete the same portal;
- one portal with 50 ms of HubSpot latency, one vs three calls in flight per portal.

Never pass/fail: it prints a table.

    .venv/bin/python bench/hubspot_completion.py [--callbacks 10000]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import os
import platform
import secrets
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import aiohttp
from aiohttp import web
from rich.console import Console
from rich.table import Table

from throttle.dispatcher.hubspot_completer import HubSpotCompleter
from throttle.engine.queue import Released
from throttle.history.migrations import migrate
from throttle.history.pool import create_pool
from throttle.hubspot.budget import PortalBudget
from throttle.hubspot.client import HubSpotClient, TokenGrant
from throttle.hubspot.crypto import TokenCipher
from throttle.hubspot.tokens import TokenManager, TokenStore
from throttle.settings import Settings
from throttle_dev.localenv import PostgresServer, RedisServer, free_port
from throttle_dev.simulator import Simulator, SimulatorConfig, create_simulator_app


@dataclass
class Row:
    scenario: str
    callbacks: int
    completed: int
    requests: int
    rate_limited: int
    seconds: float

    def cells(self) -> list[str]:
        per_s = self.completed / self.seconds if self.seconds else 0.0
        per_request = self.completed / self.requests if self.requests else 0.0
        return [
            self.scenario,
            str(self.callbacks),
            str(self.completed),
            str(self.requests),
            f"{per_request:.1f}",
            str(self.rate_limited),
            f"{self.seconds:.2f}",
            f"{per_s:,.0f}",
        ]


class Bench:
    def __init__(self, redis_url: str, dsn: str) -> None:
        self.redis_url = redis_url
        self.dsn = dsn
        self.key = Settings(  # type: ignore[call-arg]
            _env_file=None, encryption_key=base64.b64encode(secrets.token_bytes(32)).decode()
        ).encryption_keys

    async def run(
        self,
        name: str,
        portals: int,
        per_portal: int,
        pods: int = 1,
        window_s: float = 10.0,
        latency_ms: float = 0.0,
        storm_s: float = 0.0,
        in_flight: int = 1,
    ) -> Row:
        import redis.asyncio as aioredis

        sim = Simulator(SimulatorConfig(rate_window_s=window_s))
        runner = web.AppRunner(create_simulator_app(simulator=sim), access_log=None)
        await runner.setup()
        port = free_port()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        url = f"http://127.0.0.1:{port}"
        pool = await create_pool(self.dsn, max_size=4)
        await pool.execute("TRUNCATE hubspot_portals CASCADE")
        store = TokenStore(pool, TokenCipher(self.key))
        clients = [aioredis.Redis.from_url(self.redis_url) for _ in range(pods)]
        await clients[0].flushall()
        items: dict[int, list[Released]] = {}
        for portal in range(1, portals + 1):
            grant = sim.issue_tokens(portal)
            await store.save(
                portal, TokenGrant(grant["access_token"], grant["refresh_token"], 1800)
            )
            items[portal] = [
                Released(f"cb-{portal}-{i}", portal, "p", "shared", time.time(), 0, 1.0)
                for i in range(per_portal)
            ]
            for item in items[portal]:
                sim.add_blocked(item.callback_id, portal)
        sim.set_faults(latency_ms=latency_ms)
        async with aiohttp.ClientSession() as session:
            client = HubSpotClient(session, url, "sim-client-id", "sim-client-secret")
            completers = [
                HubSpotCompleter(
                    client,
                    TokenManager(store, client, redis),
                    PortalBudget(redis, 100, window_s, max_in_flight=in_flight),
                    max_budget_wait_s=0.5,
                )
                for redis in clients
            ]
            if storm_s:
                sim.set_faults(storm_until=time.time() + storm_s)
            started = time.perf_counter()
            jobs = []
            for portal, portal_items in items.items():
                for index, completer in enumerate(completers):
                    jobs.append(drain(completer, portal, portal_items[index::pods]))
            await asyncio.gather(*jobs)
            seconds = time.perf_counter() - started
        completed = len(sim.completions)
        requests = sum(s.completion_requests for s in sim.stats.values())
        limited = sum(s.rate_limited for s in sim.stats.values())
        for redis in clients:
            await redis.aclose()
        await pool.close()
        await runner.cleanup()
        return Row(name, portals * per_portal, completed, requests, limited, seconds)


async def drain(completer: HubSpotCompleter, portal: int, items: list[Released]) -> None:
    """What a dispatcher does with one portal's released items: complete, requeue, wait."""
    by_id = {i.callback_id: i for i in items}
    todo = items
    while todo:
        result = await completer.complete(portal, todo)
        todo = [by_id[i] for i in result.retry]
        if todo:
            await asyncio.sleep(result.retry_after)


async def main(callbacks: int) -> None:
    with tempfile.TemporaryDirectory() as folder:
        redis_server = RedisServer(Path(folder) / "redis").start()
        postgres = PostgresServer(Path(folder) / "pg").start()
        try:
            dsn = postgres.create_database("bench")
            await migrate(dsn)
            bench = Bench(redis_server.url, dsn)
            rows = [
                await bench.run("1 portal", 1, callbacks),
                await bench.run("50 portals at once", 50, max(callbacks // 50, 1)),
                await bench.run(
                    "429 storm 3 s, 3 pods, 1 s window", 1, 3000, pods=3, window_s=1.0, storm_s=3
                ),
                await bench.run("1 portal, 50 ms latency, 1 in flight", 1, 3000, latency_ms=50),
                await bench.run(
                    "1 portal, 50 ms latency, 3 pods, 3 in flight",
                    1,
                    3000,
                    pods=3,
                    latency_ms=50,
                    in_flight=3,
                ),
            ]
        finally:
            postgres.stop()
            redis_server.stop()
    table = Table(
        "scenario",
        "callbacks",
        "completed",
        "API calls",
        "per call",
        "429s",
        "seconds",
        "callbacks/s",
        title="HubSpot completion through the simulator",
    )
    for row in rows:
        table.add_row(*row.cells())
    console = Console(width=130)
    console.print(table)
    console.print(f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--callbacks", type=int, default=10000)
    asyncio.run(main(parser.parse_args().callbacks))
