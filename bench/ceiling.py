"""One portal at HubSpot's ceiling, sustained: completions/s against the portal's API budget.

A portal's completions are bounded by its API budget: `HUBSPOT_PORTAL_BUDGET` calls per
`HUBSPOT_BUDGET_WINDOW_SECONDS`, at most 100 callbacks per call (1,000/s with the defaults).
Calls, not callbacks, are what the budget counts, so the ceiling is reached only if, under
backlog, every call carries a full batch — with one dispatcher as with several.

Every part is a real process (`throttle_dev.stack`): Redis (AOF), PostgreSQL, the HubSpot
simulator enforcing HubSpot's rolling limit (110 calls per 10 s), the webhook, N dispatchers and
the local reconciler. One portal, one policy whose rate never binds, in force from the start:
`--feeders` processes send signed executions to the webhook at `--feed-rate` in total (above the
ceiling), as HubSpot's engine would, each registered with the simulator first (as blocked, through
its admin API: one simulator process could not both play HubSpot's engine this fast and answer
the completions). The releases trickle in as the executions arrive, which is what spent the budget
on small batches. The figures are taken over `--duration` seconds from the end of the first
budget window (`--warmup`), when the budget's fresh first window no longer counts.

Judged from HubSpot's side (the simulator): completions/s in the measured span against the
ceiling, callbacks per completion request (mean and distribution), 429s (whole run), completions
sent twice, the executions the webhook answered BLOCK per second (fed/s) and the backlog still
queued at the end of the span (positive: the portal was fed above its ceiling throughout). With
1 and 2 dispatchers, and with `--latency` ms added by the simulator to every HubSpot call. Never
pass/fail: it prints a table with the targets beside it.

    .venv/bin/python bench/ceiling.py [--dispatchers 1,2] [--latency 0,50] [--duration 60]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import platform
import statistics
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import yaml
from e2e import manifest, wait_policies
from rich.console import Console
from rich.table import Table

from throttle.hubspot.client import MAX_BATCH
from throttle.webhook_service.app import PORTALS_REFRESH_S
from throttle_dev.demo.install import client_session, install_portal
from throttle_dev.simulator import Simulator, SimulatorConfig
from throttle_dev.simulator.driver import Driver, TrafficPlan
from throttle_dev.stack import Stack, StackConfig

PORTAL = 41_000_001
POLICY = "ceiling"
SIZE_BUCKETS = ((100, 100), (90, 99), (50, 89), (1, 49))


def label(bucket: tuple[int, int]) -> str:
    low, high = bucket
    return str(low) if low == high else f"{low}-{high}"


@dataclass
class Row:
    dispatchers: int
    latency_ms: float
    ceiling: float
    completed: int
    seconds: float
    sizes: list[int]
    rate_limited: int
    sent_twice: int
    fed_per_second: float
    backlog_at_end: int

    @property
    def per_second(self) -> float:
        return self.completed / self.seconds if self.seconds else 0.0

    @property
    def share(self) -> float:
        return self.per_second / self.ceiling if self.ceiling else 0.0

    @property
    def per_request(self) -> float:
        return sum(self.sizes) / len(self.sizes) if self.sizes else 0.0

    def distribution(self) -> str:
        """Requests per batch size bucket, e.g. "100: 598, 90-99: 1, 50-89: 0, 1-49: 1"."""
        counts = Counter(
            next(label(b) for b in SIZE_BUCKETS if b[0] <= n <= b[1]) for n in self.sizes
        )
        return ", ".join(f"{label(b)}: {counts.get(label(b), 0)}" for b in SIZE_BUCKETS)

    def median_size(self) -> float:
        return statistics.median(self.sizes) if self.sizes else 0.0


async def sim_json(
    session: aiohttp.ClientSession, simulator_url: str, method: str, path: str, body: Any = None
) -> Any:
    async with session.request(method, f"{simulator_url}{path}", json=body) as response:
        response.raise_for_status()
        return await response.json()


async def feed(
    simulator_url: str, action_url: str, secret: str, rate: float, seconds: float, seed: int
) -> tuple[int, int]:
    """Send signed executions at `rate` for `seconds`, each registered with the simulator as
    blocked just before (in chunks); returns (sent, answered BLOCK)."""
    plan = TrafficPlan(portals=[PORTAL], policy=POLICY)
    gate = asyncio.Semaphore(64)
    blocked = 0
    connector = aiohttp.TCPConnector(limit=64)
    async with aiohttp.ClientSession(connector=connector) as session:
        driver = Driver(Simulator(SimulatorConfig(seed=seed)), action_url, session, secret)

        async def one(payload: dict[str, Any]) -> None:
            nonlocal blocked
            body = json.dumps(payload, ensure_ascii=True).encode()
            headers = {"Content-Type": "application/json", **driver.sign(body, "v3")}
            async with gate, session.post(action_url, data=body, headers=headers) as response:
                answer = await response.json() if response.status == 200 else {}
            if answer.get("outputFields", {}).get("hs_execution_state") == "BLOCK":
                blocked += 1

        tasks: list[asyncio.Task[None]] = []
        started = time.monotonic()
        sent = 0
        while (elapsed := time.monotonic() - started) < seconds:
            due = int(elapsed * rate) + 1
            payloads = [driver.payload(plan, PORTAL, i) for i in range(sent, due)]
            if payloads:
                rows = [{"callbackId": p["callbackId"], "portalId": PORTAL} for p in payloads]
                await sim_json(
                    session, simulator_url, "POST", "/_sim/callbacks", {"callbacks": rows}
                )
                tasks += [asyncio.create_task(one(p)) for p in payloads]
                sent = due
            tasks = [t for t in tasks if not t.done()]
            await asyncio.sleep(0.02)
        await asyncio.gather(*tasks, return_exceptions=True)
    return sent, blocked


def feeder(
    simulator_url: str,
    action_url: str,
    secret: str,
    rate: float,
    seconds: float,
    seed: int,
    out: Any,
) -> None:
    """One feeder process (spawned): its figures go to `out`. Niced: the load generator must
    not take the cores from what it measures (the dispatchers), only what they leave."""
    os.nice(10)
    out.put(asyncio.run(feed(simulator_url, action_url, secret, rate, seconds, seed)))


async def first_completion(session: aiohttp.ClientSession, simulator_url: str) -> float:
    """When (simulator clock) the portal's first completion was applied."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        body = await sim_json(session, simulator_url, "GET", f"/_sim/completions?portalId={PORTAL}")
        if body["completions"]:
            return min(float(r["at"]) for r in body["completions"])
        await asyncio.sleep(0.05)
    raise RuntimeError("no completion within 60 s of the first execution")


async def measure(
    stack: Stack, folder: Path, dispatchers: int, latency_ms: float, args: argparse.Namespace
) -> Row:
    settings = stack.settings_object()
    ceiling = settings.hubspot_portal_budget / settings.hubspot_budget_window_seconds * MAX_BATCH
    sim = stack.simulator_url
    async with client_session() as session:
        await install_portal(session, stack.webhook_url, PORTAL)
        (folder / f"{POLICY}.yaml").write_text(yaml.safe_dump(manifest(POLICY, PORTAL, False)))
        await wait_policies(stack, [PORTAL], paused=False)
        await asyncio.sleep(PORTALS_REFRESH_S + 1.5)  # the webhook learns installs on a timer
        await sim_json(session, sim, "POST", "/_sim/faults", {"latency_ms": latency_ms})
        secret = settings.hubspot_client_secret
        assert secret is not None
        context = multiprocessing.get_context("spawn")
        out = context.Queue()
        seconds = args.warmup + args.duration + 5.0
        procs = [
            context.Process(
                target=feeder,
                args=(
                    sim,
                    stack.action_url,
                    secret.get_secret_value(),
                    args.feed_rate / args.feeders,
                    seconds,
                    n,
                    out,
                ),
            )
            for n in range(args.feeders)
        ]
        for proc in procs:
            proc.start()
        try:
            begin = await first_completion(session, sim) + args.warmup
            end = begin + args.duration
            await asyncio.sleep(max(0.0, end - time.time()))
            report = await sim_json(session, sim, "GET", "/_sim/report")
            await asyncio.sleep(1.0)  # completions applied just before `end` are all in
            path = f"/_sim/completions?portalId={PORTAL}"
            rows = (await sim_json(session, sim, "GET", path))["completions"]
            fed = [out.get(timeout=seconds + 120) for _ in procs]
            final = await sim_json(session, sim, "GET", "/_sim/report")
        finally:
            for proc in procs:
                proc.join(timeout=5)
                if proc.is_alive():
                    proc.terminate()
    by_request: dict[int, list[float]] = {}
    for r in rows:
        by_request.setdefault(int(r["request"]), []).append(float(r["at"]))
    in_span = [ats for ats in by_request.values() if begin <= min(ats) < end]
    total = report["total"]
    return Row(
        dispatchers=dispatchers,
        latency_ms=latency_ms,
        ceiling=ceiling,
        completed=sum(len(ats) for ats in in_span),
        seconds=args.duration,
        sizes=[len(ats) for ats in in_span],
        rate_limited=int(final["total"]["rate_limited"]),
        sent_twice=int(final["total"]["sent_twice"]),
        fed_per_second=sum(b for _, b in fed) / seconds,
        backlog_at_end=int(total["blocked"]) - int(total["completed"]),
    )


async def run_one(dispatchers: int, latency_ms: float, args: argparse.Namespace) -> Row:
    with tempfile.TemporaryDirectory(prefix="throttle-ceiling-") as tmp:
        folder = Path(tmp) / "policies"
        folder.mkdir()
        config = StackConfig(
            root=Path(tmp) / "stack",
            dispatchers=dispatchers,
            manifests=folder,
            log_level="WARNING",
        )
        with Stack(config) as stack:
            return await measure(stack, folder, dispatchers, latency_ms, args)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dispatchers", default="1,2", help="comma-separated counts")
    parser.add_argument("--latency", default="0,50", help="comma-separated ms per HubSpot call")
    parser.add_argument("--duration", type=float, default=60.0, help="measured seconds")
    parser.add_argument(
        "--warmup", type=float, default=10.0, help="seconds left out first (a budget window)"
    )
    parser.add_argument(
        "--feed-rate", type=float, default=1500.0, help="executions/s sent, all feeders"
    )
    parser.add_argument("--feeders", type=int, default=2, help="feeder processes")
    args = parser.parse_args()
    rows: list[Row] = []
    for latency in (float(x) for x in args.latency.split(",")):
        for count in (int(c) for c in args.dispatchers.split(",")):
            print(f"{count} dispatcher(s), {latency:g} ms latency ...", flush=True)
            rows.append(asyncio.run(run_one(count, latency, args)))
    table = Table(
        title=f"One portal at its ceiling ({args.duration:g} s measured after {args.warmup:g} s)"
    )
    for column in (
        "dispatchers",
        "latency ms",
        "completions/s",
        "of ceiling",
        "target",
        "callbacks/request",
        "median",
        "requests by batch size",
        "429s",
        "sent twice",
        "fed/s",
        "backlog at end",
    ):
        table.add_column(column, justify="right")
    for r in rows:
        table.add_row(
            str(r.dispatchers),
            f"{r.latency_ms:g}",
            f"{r.per_second:,.0f} / {r.ceiling:,.0f}",
            f"{r.share:.1%}",
            "≥ 95%" if r.latency_ms == 0 else "≥ 90%",
            f"{r.per_request:.1f}",
            f"{r.median_size():g}",
            r.distribution(),
            str(r.rate_limited),
            str(r.sent_twice),
            f"{r.fed_per_second:,.0f}",
            f"{r.backlog_at_end:,}",
        )
    console = Console(width=200)
    console.print(table)
    console.print(
        f"machine: {platform.machine()}, {os.cpu_count()} cores, Python "
        f"{platform.python_version()}; every component a separate process on this host (the "
        "feeders are separate processes too)"
    )


if __name__ == "__main__":
    main()
