"""End to end: simulator → webhook → Redis → dispatchers → simulator, with 1 and 3 dispatchers.

Every part is a real process (`throttle_dev.stack`): Redis, PostgreSQL, the HubSpot simulator, the
webhook, N dispatchers and the local reconciler. Portals install the app through OAuth; each
portal gets one policy whose rate never binds, so what limits throughput is Throttle itself and
HubSpot's per-portal API budget (100 calls per 10 s by default, with up to 100 callbacks each).

Two phases per dispatcher count:
1. **flow**: the simulator's driver sends signed executions as fast as the webhook takes them;
   completions/s over the whole run (first send to last completion).
2. **drain**: the same number queued behind a paused policy, then resumed; completions/s of the
   dispatchers alone, the backlog case the "callbacks per HubSpot request" target is about.

Reported: completions/s, callbacks per HubSpot completion request, 429s, failed (recorded by the
engine with a reason), lost (blocked, never completed and not recorded as failed), duplicates
(completed twice). Never pass/fail: it prints a table.

    .venv/bin/python bench/e2e.py [--executions 6000] [--portals 4] [--dispatchers 1,3]
"""

from __future__ import annotations

import argparse
import asyncio
import platform
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import yaml
from rich.console import Console
from rich.table import Table

from throttle.webhook_service.app import PORTALS_REFRESH_S
from throttle_dev.demo.install import client_session, install_portal
from throttle_dev.stack import Stack, StackConfig

PORTAL_BASE = 31_000_000


@dataclass
class Row:
    dispatchers: int
    phase: str
    executions: int
    blocked: int
    completed: int
    seconds: float
    completion_requests: int
    rate_limited: int
    failed: int
    lost: int
    duplicates: int

    @property
    def per_second(self) -> float:
        return self.completed / self.seconds if self.seconds else 0.0

    @property
    def per_request(self) -> float:
        return self.completed / self.completion_requests if self.completion_requests else 0.0


def manifest(name: str, portal: int, paused: bool) -> dict[str, Any]:
    return {
        "apiVersion": "throttle.dev/v1beta1",
        "kind": "ThrottlePolicy",
        "metadata": {"name": name},
        "spec": {
            "portalId": portal,
            "rate": {"limit": 100_000, "period": "1s", "burst": 100_000},
            "paused": paused,
        },
    }


def write_policies(folder: Path, portals: list[int], paused: bool) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for portal in portals:
        path = folder / f"p{portal}.yaml"
        path.write_text(yaml.safe_dump(manifest(f"bench-{portal}", portal, paused)))


async def report(session: aiohttp.ClientSession, stack: Stack) -> dict[str, Any]:
    async with session.get(f"{stack.simulator_url}/_sim/report") as response:
        body: dict[str, Any] = await response.json()
        return body


async def drive(
    session: aiohttp.ClientSession, stack: Stack, portal: int, executions: int
) -> dict[str, Any]:
    plan = {
        "actionUrl": stack.action_url,
        "executions": executions,
        "portals": [portal],
        "policy": f"bench-{portal}",
        "concurrency": 16,
    }
    async with session.post(
        f"{stack.simulator_url}/_sim/drive", json=plan, timeout=aiohttp.ClientTimeout(total=None)
    ) as response:
        body: dict[str, Any] = await response.json()
        return body


async def wait_settled(
    session: aiohttp.ClientSession, stack: Stack, portals: list[int], target: int, timeout: float
) -> tuple[dict[str, Any], float, int]:
    """Poll until every execution is completed or recorded as failed by the engine.

    Returns the simulator's report, when it settled, and how many the engine recorded as failed.
    """
    from throttle.engine.queue_status import StatusReader

    reader = StatusReader.from_settings(stack.settings_object())
    deadline = time.monotonic() + timeout
    try:
        while True:
            body = await report(session, stack)
            rows = [r for r in await reader.rows() if r.portal_id in portals]
            failed = sum(r.failed_total for r in rows)
            settled = sum(r.completed_total for r in rows) + failed
            if settled >= target or time.monotonic() > deadline:
                return body, time.monotonic(), failed
            await asyncio.sleep(0.1)
    finally:
        await reader.close()


async def wait_policies(stack: Stack, portals: list[int], paused: bool) -> None:
    from throttle.engine.queue_status import StatusReader

    reader = StatusReader.from_settings(stack.settings_object())
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            found = {(p.portal_id, p.paused) for p in await reader.policies()}
            if all((portal, paused) in found for portal in portals):
                return
            await asyncio.sleep(0.1)
        raise RuntimeError("the reconciler did not apply the bench policies in 30 s")
    finally:
        await reader.close()


def row_from(
    dispatchers: int,
    phase: str,
    executions: int,
    body: dict[str, Any],
    seconds: float,
    failed: int,
) -> Row:
    total = body["total"]
    return Row(
        dispatchers=dispatchers,
        phase=phase,
        executions=executions,
        blocked=int(total["blocked"]),
        completed=int(total["completed"]),
        seconds=seconds,
        completion_requests=int(total["completion_requests"]),
        rate_limited=int(total["rate_limited"]),
        failed=failed,
        lost=int(total["blocked"]) - int(total["completed"]) - failed,
        duplicates=int(total["duplicates"]),
    )


async def phase(
    stack: Stack, folder: Path, portals: list[int], executions: int, paused: bool
) -> tuple[dict[str, Any], float, int]:
    per_portal = executions // len(portals)
    async with client_session() as session:
        await session.post(f"{stack.simulator_url}/_sim/reset")
        for portal in portals:
            await install_portal(session, stack.webhook_url, portal)
        write_policies(folder, portals, paused)
        await wait_policies(stack, portals, paused)
        await asyncio.sleep(PORTALS_REFRESH_S + 1.5)  # the webhook learns installs on a timer
        started = time.monotonic()
        await asyncio.gather(*(drive(session, stack, p, per_portal) for p in portals))
        if paused:
            started = time.monotonic()
            write_policies(folder, portals, paused=False)
        _body, ended, failed = await wait_settled(
            session, stack, portals, per_portal * len(portals), 600
        )
        await asyncio.sleep(1.0)  # anything completed twice shows up in the report by now
        return await report(session, stack), ended - started, failed


async def run_one(dispatchers: int, executions: int, portals: list[int]) -> list[Row]:
    rows = []
    with tempfile.TemporaryDirectory(prefix="throttle-e2e-") as tmp:
        folder = Path(tmp) / "policies"
        folder.mkdir()
        config = StackConfig(
            root=Path(tmp) / "stack",
            dispatchers=dispatchers,
            manifests=folder,
            log_level="WARNING",
        )
        with Stack(config) as stack:
            for name, paused, offset in (("flow", False, 0), ("drain", True, 1000)):
                phase_portals = [p + offset for p in portals]
                body, seconds, failed = await phase(
                    stack, folder, phase_portals, executions, paused
                )
                rows.append(row_from(dispatchers, name, executions, body, seconds, failed))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--executions", type=int, default=6000, help="per phase")
    parser.add_argument("--portals", type=int, default=4)
    parser.add_argument("--dispatchers", default="1,3", help="comma-separated counts")
    args = parser.parse_args()
    portals = [PORTAL_BASE + i for i in range(args.portals)]
    rows: list[Row] = []
    for count in (int(c) for c in args.dispatchers.split(",")):
        rows += asyncio.run(run_one(count, args.executions, portals))
    table = Table(
        title=f"End to end ({args.executions} executions per phase, {args.portals} portals)"
    )
    for column in (
        "dispatchers",
        "phase",
        "completed",
        "seconds",
        "completions/s",
        "callbacks/request",
        "429s",
        "failed",
        "lost",
        "duplicates",
    ):
        table.add_column(column, justify="right")
    for r in rows:
        table.add_row(
            str(r.dispatchers),
            r.phase,
            f"{r.completed}/{r.blocked}",
            f"{r.seconds:.1f}",
            f"{r.per_second:.0f}",
            f"{r.per_request:.1f}",
            str(r.rate_limited),
            str(r.failed),
            str(r.lost),
            str(r.duplicates),
        )
    console = Console(width=120)
    console.print(table)
    console.print(
        f"machine: {platform.machine()}, {platform.python_version()}; every component a separate "
        "process on the same host (driver and HubSpot simulator share one process)"
    )


if __name__ == "__main__":
    main()
