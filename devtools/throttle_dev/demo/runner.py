"""The demo from start to verdict: stack up, install, policies, traffic, live view, report, plot.

`run(options)` is what `python -m throttle_dev.demo` and the end-to-end test call. It returns a
`DemoOutcome` with the same per-policy results it prints, so the test judges exactly what a
newcomer sees.
"""

from __future__ import annotations

import asyncio
import json
import math
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from rich.console import Console, Group
from rich.live import Live
from rich.table import Table

from throttle.engine import keys
from throttle.engine.queue_status import StatusReader
from throttle.webhook_service.app import PORTALS_REFRESH_S
from throttle.webhook_service.console.sessions import SessionSigner
from throttle_dev.demo import measure
from throttle_dev.demo.install import client_session, install_portal
from throttle_dev.demo.release_log import read_release_log
from throttle_dev.demo.scenario import DemoPolicy, Scenario, render, resume
from throttle_dev.demo.verdict import (
    RATE_TOLERANCE,
    PolicyResult,
    PortalResult,
    PriorityResult,
    all_problems,
    plot_releases,
    print_report,
)
from throttle_dev.stack import Stack, StackConfig

REPO = Path(__file__).resolve().parents[3]
SAMPLE_INTERVAL_S = 0.5
DEFAULT_ACTION_ID = 7000


@dataclass
class DemoOptions:
    duration_s: float = 180.0
    dispatchers: int = 2
    root: Path = REPO / ".local" / "demo"
    output: Path = REPO / "demo-output"
    manifests: Path = REPO / "deploy" / "examples" / "demo"
    scale: float = 1.0
    """Multiplies every policy's enrollments (tests use less than 1 to run lighter)."""
    duplicate_ratio: float = 0.02
    """Share of executions HubSpot delivers twice (its retries): they must be dropped."""
    tolerance: float = RATE_TOLERANCE
    live: bool = True
    keep_data: bool = False


@dataclass
class Sample:
    """What Redis and the simulator said at one instant (seconds since traffic started)."""

    t: float
    epoch: float = 0.0
    queued: dict[str, int] = field(default_factory=dict)
    in_flight: dict[str, int] = field(default_factory=dict)
    released: dict[str, int] = field(default_factory=dict)
    completed: dict[int, int] = field(default_factory=dict)


@dataclass
class DemoOutcome:
    policies: list[PolicyResult]
    portals: list[PortalResult]
    problems: list[str]
    plot: Path | None
    summary: Path | None
    elapsed_s: float

    @property
    def ok(self) -> bool:
        return not self.problems


class DemoError(RuntimeError):
    """The demo could not run (a component failed); the message says which and shows its log."""


# --- talking to the parts -----------------------------------------------------------------------
async def sim_report(session: aiohttp.ClientSession, stack: Stack) -> dict[str, Any]:
    async with session.get(f"{stack.simulator_url}/_sim/report") as response:
        response.raise_for_status()
        report: dict[str, Any] = await response.json()
        return report


async def drive(
    session: aiohttp.ClientSession, stack: Stack, policy: DemoPolicy, options: DemoOptions
) -> dict[str, Any]:
    """Ask the simulator's driver to enroll this policy's executions (signed, as HubSpot does)."""
    plan = {
        "actionUrl": stack.action_url,
        "executions": policy.executions,
        "portals": [policy.portal_id],
        "policy": None if policy.inline_fields else policy.name,
        "extra_input_fields": policy.inline_fields or {},
        "action_definition_id": policy.action_id or DEFAULT_ACTION_ID,
        "duplicate_ratio": options.duplicate_ratio,
        "concurrency": 6,
        "workflow_ids": [192814114, 192814115, 192814116],
        "priorities": policy.priorities,
    }
    timeout = aiohttp.ClientTimeout(total=None)
    async with session.post(
        f"{stack.simulator_url}/_sim/drive", json=plan, timeout=timeout
    ) as response:
        body: dict[str, Any] = await response.json()
        if response.status != 200:
            raise DemoError(f"driver for {policy.name}: HTTP {response.status} {body}")
        return body


class Probe:
    """Reads per-policy queue figures from Redis through the engine's `Queue.stats`."""

    def __init__(self, stack: Stack, scenario: Scenario) -> None:

        self.reader = StatusReader.from_settings(stack.settings_object())
        self.scenario = scenario

    async def read(self) -> dict[str, Any]:
        return await self.reader.by_name([(p.portal_id, p.name) for p in self.scenario.policies])

    async def known(self) -> set[str]:
        return {name for name, row in (await self.read()).items() if row is not None}

    async def close(self) -> None:
        await self.reader.close()


# --- live view -----------------------------------------------------------------------------------
def live_table(scenario: Scenario, samples: list[Sample], elapsed: float, duration: float) -> Table:
    sample = samples[-1] if samples else Sample(0.0)
    table = Table(title=f"Throttle demo — {elapsed:5.1f}s of {duration:.0f}s", expand=False)
    for column in ("policy", "portal", "rate", "queued", "in flight", "released", "rel/s (5s)"):
        table.add_column(column, justify="left" if column == "policy" else "right")
    table.add_column("state")
    for policy in scenario.policies:
        name = policy.name
        state = []
        if policy.resume_at is not None and elapsed < policy.resume_at:
            state.append("paused")
        if policy.expect_none:
            state.append("outside window")
        if policy.daily_cap is not None and sample.released.get(name, 0) >= policy.daily_cap:
            state.append("daily cap reached")
        table.add_row(
            name,
            str(policy.portal_id),
            policy.describe_rate(),
            str(sample.queued.get(name, 0)),
            str(sample.in_flight.get(name, 0)),
            str(sample.released.get(name, 0)),
            f"{recent_rates(samples, name):.1f}",
            ", ".join(state) or "releasing",
        )
    return table


def recent_rates(samples: list[Sample], name: str, span: float = 5.0) -> float:
    if len(samples) < 2:
        return 0.0
    last = samples[-1]
    first = next((s for s in samples if s.t >= last.t - span), samples[0])
    if last.t <= first.t:
        return 0.0
    return (last.released.get(name, 0) - first.released.get(name, 0)) / (last.t - first.t)


# --- the run --------------------------------------------------------------------------------------
async def _main(
    stack: Stack, scenario: Scenario, options: DemoOptions, console: Console
) -> DemoOutcome:
    started = time.monotonic()
    async with client_session() as session:
        console.print(f"[bold]Installing the app in {len(scenario.portals)} portals via OAuth[/]")
        for portal in scenario.portals:
            await install_portal(session, stack.webhook_url, portal)
            console.print(f"  portal {portal}: installed (tokens stored encrypted)")
        first = scenario.portals[0]
        console.print(f"  console of portal {first} (operator, 8 h): {_console_link(stack, first)}")
        probe = Probe(stack, scenario)
        try:
            await _wait_policies(probe, scenario, console)
            # Webhook pods learn installs from PostgreSQL on a timer (never on the request path).
            with console.status("Waiting for the webhook to see the new installs"):
                await asyncio.sleep(PORTALS_REFRESH_S + 1.5)
            samples, drives = await _traffic(session, stack, scenario, options, probe, console)
            console.print("[bold]Stopping dispatchers (they hand back what they hold)…[/]")
            for name in stack.dispatcher_names:
                await asyncio.to_thread(stack.terminate, name)
            final = await probe.read()
            report = await sim_report(session, stack)
        finally:
            await probe.close()
        history = await _release_history(stack, scenario)
    policies, portals = _results(scenario, samples, drives, final, report, history, options)
    problems = all_problems(policies, portals, _drive_problems(drives))
    options.output.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    plot = _plot(options.output / f"demo-{stamp}.png", scenario, samples, history)
    summary = options.output / f"demo-{stamp}.json"
    summary.write_text(
        json.dumps(
            {
                "duration_s": scenario.duration_s,
                "policies": [asdict(p) for p in policies],
                "portals": [asdict(p) for p in portals],
                "problems": problems,
            },
            indent=2,
            default=str,
        )
    )
    print_report(console, policies, portals, problems)
    return DemoOutcome(policies, portals, problems, plot, summary, time.monotonic() - started)


def _console_link(stack: Stack, portal_id: int) -> str:
    """What `throttle console-link --portal P --role operator` prints, for the demo's stack."""
    key = stack.settings["console_session_key"]
    token, _ = SessionSigner(key).issue(
        "link", portal_id, "operator", "link:demo", time.time() + 8 * 3600
    )
    return f"{stack.webhook_url}/console/link?t={token}"


async def _wait_policies(probe: Probe, scenario: Scenario, console: Console) -> None:
    console.print(f"[bold]Loading {len(scenario.policies)} policies from manifests[/]")
    for policy in scenario.policies:
        notes = f" ({'; '.join(policy.notes)})" if policy.notes else ""
        console.print(f"  {policy.name}: {policy.describe_rate()}{notes}")
    wanted = {p.name for p in scenario.policies if p.inline_fields is None}  # inline: on use
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if wanted <= await probe.known():
            return
        await asyncio.sleep(0.2)
    missing = wanted - await probe.known()
    raise DemoError(f"the reconciler did not apply {sorted(missing)} within 30s")


async def _traffic(
    session: aiohttp.ClientSession,
    stack: Stack,
    scenario: Scenario,
    options: DemoOptions,
    probe: Probe,
    console: Console,
) -> tuple[list[Sample], dict[str, dict[str, Any]]]:
    total = scenario.total_executions
    console.print(
        f"[bold]Enrolling {total} executions across {len(scenario.portals)} portals "
        f"for {scenario.duration_s:.0f}s[/] (HubSpot retries {options.duplicate_ratio:.0%} of them)"
    )
    origin = time.monotonic()
    tasks = {
        p.name: asyncio.create_task(drive(session, stack, p, options)) for p in scenario.policies
    }
    samples: list[Sample] = []
    resumed: set[str] = set()

    def render_view() -> Group:
        elapsed = time.monotonic() - origin
        return Group(live_table(scenario, samples, elapsed, scenario.duration_s))

    with Live(render_view(), console=console, refresh_per_second=4, transient=False) as live:
        while True:
            elapsed = time.monotonic() - origin
            if elapsed >= scenario.duration_s:
                break
            for policy in scenario.policies:
                due = policy.resume_at is not None and elapsed >= policy.resume_at
                if due and policy.name not in resumed:
                    resume(policy)
                    resumed.add(policy.name)
            dead = stack.check_alive()
            if dead:
                name = dead[0]
                raise DemoError(f"{name} exited:\n{stack.components[name].log_tail()}")
            samples.append(await _sample(probe, elapsed))
            if options.live:
                live.update(render_view())
            await asyncio.sleep(max(0.0, SAMPLE_INTERVAL_S - (time.monotonic() - origin - elapsed)))
    console.print()
    drives: dict[str, dict[str, Any]] = {}
    for name, task in tasks.items():
        try:
            async with asyncio.timeout(60):
                drives[name] = await task
        except TimeoutError:
            drives[name] = {"problems": ["driver still sending after the run"], "answers": {}}
    return samples, drives


async def _sample(probe: Probe, t: float) -> Sample:
    sample = Sample(t, time.time())
    rows = await probe.read()
    for name, row in rows.items():
        if row is None:
            continue
        sample.queued[name] = row.queued
        sample.in_flight[name] = row.in_flight
        sample.released[name] = row.released_total
    return sample


@dataclass
class Releases:
    """Per policy name: release instants and waits (seconds queued), from the history streams."""

    times: dict[str, list[float]] = field(default_factory=dict)
    waits: dict[str, list[float]] = field(default_factory=dict)
    priority_waits: dict[str, dict[str, list[float]]] = field(default_factory=dict)
    """Per policy name, per priority value: the waits of its released executions."""


async def _release_history(stack: Stack, scenario: Scenario) -> Releases:
    """Every release of the run as the engine recorded it (PostgreSQL history plus what the
    streams still hold; dispatchers, which run the history writers, are stopped by now)."""
    import redis.asyncio as aioredis

    client: Any = aioredis.Redis.from_url(stack.redis_url)
    try:
        log = await read_release_log(client, stack.database_url, scenario.portals)
    finally:
        await client.aclose()
    releases = Releases()
    for policy in scenario.policies:
        key = keys.policy_key(policy.portal_id, policy.name)
        releases.times[policy.name] = log.times(key)
        releases.waits[policy.name] = log.waits(key)
        if policy.priorities:
            releases.priority_waits[policy.name] = log.waits_by_priority(key)
    return releases


def _drive_problems(drives: dict[str, dict[str, Any]]) -> list[str]:
    found = []
    for name, result in drives.items():
        for problem in result.get("problems", [])[:3]:
            found.append(f"{name}: driver saw {problem}")
        if result.get("gave_up"):
            found.append(f"{name}: HubSpot gave up delivering {result['gave_up']} executions")
    return found


def _results(
    scenario: Scenario,
    samples: list[Sample],
    drives: dict[str, dict[str, Any]],
    final: dict[str, Any],
    report: dict[str, Any],
    history: Releases,
    options: DemoOptions,
) -> tuple[list[PolicyResult], list[PortalResult]]:
    portals = []
    for row in report.get("portals", []):
        portals.append(
            PortalResult(
                portal_id=int(row["portal_id"]),
                requests=int(row["requests"]),
                completion_requests=int(row["completion_requests"]),
                rate_limited=int(row["rate_limited"]),
                completed=int(row["completed"]),
                duplicates=int(row["duplicates"]),
                expired=int(row["expired"]),
            )
        )
    results = []
    for policy in scenario.policies:
        name = policy.name
        drive_result = drives.get(name, {})
        answers = drive_result.get("answers", {})
        stats = final.get(name)
        held = (stats.queued + stats.in_flight) if stats is not None else 0
        completed = stats.completed_total if stats is not None else 0
        release_times = history.times.get(name, [])
        waits = history.waits.get(name, [])
        result = PolicyResult(
            name=name,
            portal_id=policy.portal_id,
            rate=policy.describe_rate(),
            target_per_s=policy.rate_per_s,
            sent=int(drive_result.get("sent", 0)),
            blocked=int(answers.get("BLOCK", 0)),
            released=stats.released_total if stats is not None else len(release_times),
            completed=completed,
            held=held,
            failed=stats.failed_total if stats is not None else 0,
            wait_p50_s=measure.percentile(waits, 50),
            wait_p90_s=measure.percentile(waits, 90),
            wait_p99_s=measure.percentile(waits, 99),
            window_bound=policy.limit + policy.burst,
            max_window=measure.max_in_window(release_times, policy.period_s),
            expect_none=policy.expect_none,
            tolerance=options.tolerance,
            notes=list(policy.notes),
            priorities=_priority_results(policy, history),
        )
        result.lost = max(0, result.blocked - result.completed - result.held - result.failed)
        _measure_rate(result, policy, samples, release_times)
        results.append(result)
    return results, portals


def _priority_results(policy: DemoPolicy, history: Releases) -> list[PriorityResult]:
    """Per priority value of a policy whose records carry one: how many went, how long they
    waited (in the order the records carried them, highest first)."""
    waits = history.priority_waits.get(policy.name, {})
    return [
        PriorityResult(
            value=value,
            released=len(waits.get(value, [])),
            wait_p50_s=measure.percentile(waits.get(value, []), 50),
            wait_p90_s=measure.percentile(waits.get(value, []), 90),
        )
        for value in policy.priorities
    ]


def _measure_rate(
    result: PolicyResult, policy: DemoPolicy, samples: list[Sample], release_times: list[float]
) -> None:
    """Achieved rate over the span where the policy was backlogged and allowed to release."""
    if policy.expect_none or not release_times or not samples:
        return
    span = measure.backlogged_span([(s.t, s.queued.get(policy.name, 0)) for s in samples])
    if span is None:
        return
    start = max(span[0], policy.releasable_from)
    end = min(span[1], policy.releasable_until)
    origin = _epoch_origin(samples)
    cap_end = math.inf
    if policy.daily_cap is not None and len(release_times) >= policy.daily_cap:
        cap_end = release_times[policy.daily_cap - 1] - origin
    end = min(end, cap_end)
    if end <= start:
        return
    # Skipping `burst` releases is harmless when the saved-up burst fell outside the span (the
    # estimator only uses gaps between releases) and removes it when it fell inside.
    measured = measure.achieved_rate(release_times, origin + start, origin + end, skip=policy.burst)
    if measured is not None:
        result.achieved_per_s, result.measured_releases = measured


def _epoch_origin(samples: list[Sample]) -> float:
    """The wall-clock instant of run time 0 (history timestamps are epoch seconds)."""
    return samples[0].epoch - samples[0].t if samples else 0.0


def _plot(
    path: Path,
    scenario: Scenario,
    samples: list[Sample],
    history: Releases,
) -> Path:
    origin = _epoch_origin(samples)
    seconds = math.ceil(scenario.duration_s)
    series = {
        p.name: measure.per_second(history.times.get(p.name, []), origin, seconds)
        for p in scenario.policies
    }
    limits = {p.name: p.rate_per_s for p in scenario.policies}
    marks: dict[str, list[tuple[float, str]]] = {}
    for p in scenario.policies:
        if p.resume_at is not None:
            marks.setdefault(p.name, []).append((p.resume_at, "resumed"))
        times = history.times.get(p.name, [])
        if p.daily_cap is not None and len(times) >= p.daily_cap:
            marks.setdefault(p.name, []).append((times[p.daily_cap - 1] - origin, "cap reached"))
        if p.expect_none:
            marks.setdefault(p.name, []).append((0.0, "outside its window: nothing released"))
    return plot_releases(path, series, limits, marks=marks)


def run(
    options: DemoOptions,
    console: Console | None = None,
    on_stack: Callable[[Stack], None] | None = None,
) -> DemoOutcome:
    """Start everything, run the scenario, tear everything down (also on Ctrl-C)."""
    console = console or Console()
    # A leftover folder (a killed run, or --keep) would replay old queues from Redis' AOF.
    shutil.rmtree(options.root, ignore_errors=True)
    scenario = render(options.manifests, options.root / "policies", options.duration_s)
    if options.scale != 1.0:
        for policy in scenario.policies:
            policy.executions = max(50, int(policy.executions * options.scale))
    config = StackConfig(
        root=options.root / "stack",
        dispatchers=options.dispatchers,
        manifests=scenario.folder,
        keep_data=True,  # the whole demo folder goes at the end, below
    )
    stack = Stack(config)
    try:
        with console.status("Starting the stack") as status:
            stack.start(on_step=lambda name: status.update(f"Starting {name}"))
        console.print(
            f"[bold]Stack up[/] in {options.root}: Redis, PostgreSQL, simulator, webhook, "
            f"{options.dispatchers} dispatchers, policy reconciler "
            f"(logs in {config.root / 'logs'})"
        )
        if on_stack is not None:
            on_stack(stack)
        return asyncio.run(_main(stack, scenario, options, console))
    finally:
        with console.status("Stopping everything"):
            stack.stop()
            if not options.keep_data:
                shutil.rmtree(options.root, ignore_errors=True)
