"""The faults, one scenario each, and the function that runs a scenario.

A scenario's `act` runs while HubSpot's traffic for its portal flows: it waits until the system
is mid-work (executions held by dispatchers, requests in flight), breaks one thing, and repairs
it the way an operator or Kubernetes would. `run` then lets the backlog drain and judges. What an
act checks itself while the fault lasts and finds broken, it returns as a note starting with
`UNMET`: the row fails on it.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from throttle.engine.queue_status import StatusReader
from throttle_dev.chaos.harness import FaultRow, Harness, Rate, Traffic

Act = Callable[[Harness, int, str], Awaitable[list[str]]]
UNMET = "unmet: "


@dataclass(frozen=True)
class Scenario:
    key: str
    title: str
    act: Act
    slow: bool = False
    expect_failures: bool = False
    """The fault makes completion impossible (a revoked token): failures with a reason are the
    right outcome, silence is not."""
    traffic: Traffic = field(default_factory=Traffic)
    rate: Rate = field(default_factory=Rate)
    settle_s: float = 120.0


async def _until(check: Callable[[], Awaitable[bool]], timeout_s: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if await check():
            return True
        await asyncio.sleep(0.1)
    return False


async def _completed_at_least(h: Harness, portal: int, n: int) -> bool:
    return await _until(lambda: _count_completed(h, portal, n))


async def _count_completed(h: Harness, portal: int, n: int) -> bool:
    return int((await h.report(portal))["completed"]) >= n


async def _in_flight(h: Harness, portal: int, policy: str) -> int:

    reader = StatusReader.from_settings(h.stack.settings_object())
    try:
        row = (await reader.by_name([(portal, policy)])).get(policy)
        return row.in_flight if row is not None else 0
    finally:
        await reader.close()


# --- the faults ---------------------------------------------------------------------------------
async def kill_dispatcher(h: Harness, portal: int, policy: str) -> list[str]:
    """HubSpot answers in 300 ms here, so the dispatchers always hold leased executions with a
    completion call in flight: the kill lands mid-batch, and HubSpot may apply the call the dead
    dispatcher sent (the request reached it) while the lease later hands the executions back."""
    await h.faults(latency_ms=300.0)
    await _completed_at_least(h, portal, 10)

    async def holding() -> bool:
        return await _in_flight(h, portal, policy) > 0

    mid_batch = await _until(holding, 10.0)
    held = await _in_flight(h, portal, policy)
    await asyncio.to_thread(h.stack.kill, "dispatcher-1")
    await asyncio.sleep(2.0)
    await asyncio.to_thread(h.stack.start_component, "dispatcher-1")
    state = f"{held} executions leased" if mid_batch else "nothing leased at that instant"
    return [f"dispatcher-1 SIGKILLed ({state}; HubSpot latency 300 ms), restarted 2 s later"]


async def kill_webhook(h: Harness, portal: int, policy: str) -> list[str]:
    await asyncio.sleep(2.0)
    await asyncio.to_thread(h.stack.kill, "webhook")
    await asyncio.sleep(1.5)
    await asyncio.to_thread(h.stack.start_component, "webhook")
    return ["webhook SIGKILLed with requests in flight, restarted 1.5 s later"]


async def restart_redis(h: Harness, portal: int, policy: str) -> list[str]:
    await _completed_at_least(h, portal, 10)
    await asyncio.to_thread(h.stack.redis.restart)
    return ["Redis restarted (SIGTERM, AOF appendfsync everysec) mid-traffic"]


async def kill_redis(h: Harness, portal: int, policy: str) -> list[str]:
    await _completed_at_least(h, portal, 10)
    await asyncio.sleep(1.5)  # let AOF's everysec fsync cover the start of the run
    await asyncio.to_thread(h.stack.redis.restart, True)
    return ["Redis SIGKILLed and restarted from its AOF (everysec: up to 1 s of writes at risk)"]


async def wipe_redis_and_recover(h: Harness, portal: int, policy: str) -> list[str]:
    await _completed_at_least(h, portal, 20)
    await asyncio.sleep(2.0)  # history writers copy events to PostgreSQL every ~second
    client = h.stack.redis.sync_client()
    await asyncio.to_thread(client.flushall)
    client.close()
    output = await h.recover()
    return ["Redis wiped (FLUSHALL) mid-traffic", f"throttle recover: {output.splitlines()[0]}"]


def stop_postgres(seconds: float) -> Act:
    async def act(h: Harness, portal: int, policy: str) -> list[str]:
        await _completed_at_least(h, portal, 10)
        await asyncio.to_thread(h.stack.postgres.stop)
        await asyncio.sleep(seconds)
        await asyncio.to_thread(h.stack.postgres.start)
        return [f"PostgreSQL stopped for {seconds:.0f} s mid-traffic"]

    return act


async def simulator_5xx(h: Harness, portal: int, policy: str) -> list[str]:
    await h.faults(error_ratio=0.2)
    return ["HubSpot answers 20% of API calls with 503 for the whole run"]


async def simulator_latency(h: Harness, portal: int, policy: str) -> list[str]:
    await h.faults(latency_ms=2000.0)
    return ["every HubSpot API answer delayed 2 s for the whole run"]


async def simulator_429_storm(h: Harness, portal: int, policy: str) -> list[str]:
    await _completed_at_least(h, portal, 10)
    await h.faults(storm_seconds=10.0, storm_portals=[portal])
    return ["HubSpot answers every completion call of the portal 429 for 10 s"]


async def refuse_client_secret(h: Harness, portal: int, policy: str) -> list[str]:
    """HubSpot's token endpoint refuses the app's client secret (rotated in HubSpot before the
    deployment, a stray newline in a Secret: 400 BAD_CLIENT_SECRET, the status a dead refresh
    token gets too) for two token lifetimes mid-traffic, then accepts it again. Nobody may be
    uninstalled, every held execution must wait and complete once it is over, and the fault
    must be named while it lasts: the webhook's /readyz, the dispatchers' /healthz and
    `throttle_hubspot_config_fault`, `throttle doctor`."""
    await _completed_at_least(h, portal, 10)
    window = 2.0 * h.token_ttl_s
    await h.faults(reject_client_secret_seconds=window)
    ends = time.monotonic() + window
    notes = [
        f"HubSpot refuses the app's client secret for {window:.0f} s (two token lifetimes) "
        "mid-traffic, then accepts it again"
    ]

    async def readyz_fault() -> str:
        return str((await h.readyz()).get("faults", {}).get("hubspot_config", ""))

    async def named() -> bool:
        return "BAD_CLIENT_SECRET" in await readyz_fault()

    if await _until(named, timeout_s=window):
        seen = await h.dispatchers_seen()
        if not any(
            "BAD_CLIENT_SECRET" in health.get("faults", {}).get("hubspot_config", "")
            and 'throttle_hubspot_config_fault{kind="client_credentials"} 1.0' in metrics
            for health, metrics in seen
        ):
            notes.append(UNMET + "no dispatcher's /healthz and metrics named the fault")
        code, out = await h.doctor()
        if code != 1 or "hubspot app" not in out or "BAD_CLIENT_SECRET" not in out:
            notes.append(UNMET + f"`throttle doctor` did not name the fault (exit {code})")
    else:
        notes.append(UNMET + "/readyz never named the fault while it lasted")
    await asyncio.sleep(max(0.0, ends - time.monotonic()))
    report = await h.report(portal)
    held = int(report["blocked"]) - int(report["completed"])
    notes.append(f"{held} executions held when the secret was accepted again")
    if held <= 0:
        notes.append(UNMET + "nothing was held: the fault never stopped a completion")

    async def cleared() -> bool:
        return not await readyz_fault()

    if not await _until(cleared, timeout_s=90.0):
        notes.append(UNMET + "/readyz still names the fault 90 s after it was fixed")
    return notes


async def revoke_token(h: Harness, portal: int, policy: str) -> list[str]:
    await _completed_at_least(h, portal, 30)
    await h.revoke(portal)
    return ["the portal's refresh and access tokens revoked mid-traffic (an uninstall)"]


async def late_completion_answers(h: Harness, portal: int, policy: str) -> list[str]:
    """HubSpot applies each completion at once but answers 8 s later, most of the stack's lease
    (12 s) and near a request's deadline (10 s): a dispatcher that gives up on a batch, or lets
    the ones waiting behind it lapse, has them sent a second time, and a refused re-send must
    never read as a failure."""
    await h.faults(completion_answer_delay_ms=8000.0)
    return ["HubSpot applies each completion at once and answers it 8 s later"]


async def spend_retries_under_a_daily_cap(h: Harness, portal: int, policy: str) -> list[str]:
    """Half of HubSpot's answers are 5xx for the whole run while the policy's daily cap is
    exactly the day's traffic: every retry charged against the cap would leave executions
    waiting for local midnight."""
    await h.faults(error_ratio=0.5)
    return ["HubSpot answers half of all API calls 503; the daily cap equals the traffic"]


FAULTS: list[Scenario] = [
    Scenario("dispatcher-sigkill", "SIGKILL a dispatcher mid-batch", kill_dispatcher),
    Scenario("webhook-sigkill", "SIGKILL the webhook mid-request", kill_webhook),
    Scenario("redis-restart", "restart Redis (AOF on)", restart_redis),
    Scenario("postgres-5s", "stop PostgreSQL for 5 s", stop_postgres(5.0)),
    Scenario("hubspot-5xx", "HubSpot: 20% 5xx", simulator_5xx, slow=True),
    Scenario("hubspot-429-storm", "HubSpot: 429 storm (10 s)", simulator_429_storm, slow=True),
    Scenario(
        "token-revoked",
        "HubSpot: portal's token revoked",
        revoke_token,
        expect_failures=True,
    ),
    Scenario(
        "client-secret-refused",
        "HubSpot: app's client secret refused",
        refuse_client_secret,
        # Enrollments keep arriving through the fault (50 s at 6/s): some complete before it,
        # the rest are held while the token expires, and all complete after.
        traffic=Traffic(executions=300, rate_per_s=6.0),
        rate=Rate(limit=10, period_s=1, burst=5),
        settle_s=150.0,
    ),
    Scenario(
        "hubspot-latency",
        "HubSpot: 2 s latency",
        simulator_latency,
        slow=True,
        traffic=Traffic(executions=100, rate_per_s=20.0),
        settle_s=300.0,
    ),
    Scenario(
        "hubspot-late-answers",
        "HubSpot: completions answered 8 s late",
        late_completion_answers,
        # a backlog of 1,000 for the portal at once: ten batches, each answered 8 s late
        traffic=Traffic(executions=1000, rate_per_s=250.0),
        rate=Rate(limit=500, period_s=1, burst=500),
    ),
    Scenario(
        "hubspot-5xx-daily-cap",
        "HubSpot: 50% 5xx, daily cap = traffic",
        spend_retries_under_a_daily_cap,
        slow=True,
        rate=Rate(limit=40, period_s=1, burst=5, daily_cap=150),
    ),
    Scenario("redis-sigkill", "SIGKILL Redis (AOF everysec)", kill_redis, slow=True),
    Scenario(
        "redis-wipe-recover",
        "wipe Redis, `throttle recover`",
        wipe_redis_and_recover,
        slow=True,
    ),
    Scenario(
        "postgres-60s",
        "stop PostgreSQL for 60 s",
        stop_postgres(60.0),
        slow=True,
        traffic=Traffic(executions=900, rate_per_s=15.0),
        rate=Rate(limit=10, period_s=1, burst=5),
        settle_s=150.0,
    ),
]


def by_key(key: str) -> Scenario:
    for scenario in FAULTS:
        if scenario.key == key:
            return scenario
    raise KeyError(f"no fault named {key!r}; known: {', '.join(s.key for s in FAULTS)}")


async def heal(h: Harness) -> None:
    """Bring back any process a scenario left down, so the next one starts from a whole system."""
    if not h.stack.redis._proc.running:
        await asyncio.to_thread(h.stack.redis.start)
    if not h.stack.postgres._proc.running:
        await asyncio.to_thread(h.stack.postgres.start)
    for name in h.stack.check_alive():
        await asyncio.to_thread(h.stack.start_component, name)


async def run(h: Harness, scenario: Scenario) -> FaultRow:
    """Traffic for a fresh portal, the fault mid-traffic, drain, judge.

    Injected HubSpot faults stay on until the backlog has drained: the dispatchers must get
    through them, not around them."""
    portal = h.portal()
    policy = f"chaos-{scenario.key}"
    started = time.monotonic()
    await h.put_policy(portal, policy, scenario.rate)
    drive = asyncio.create_task(h.drive(portal, policy, scenario.traffic))
    try:
        try:
            notes = await scenario.act(h, portal, policy)
            result = await drive
        finally:
            if not drive.done():
                drive.cancel()
            await heal(h)
        settled = await h.settle(portal, scenario.settle_s)
    finally:
        await h.clear_faults()
    row = await h.judge(
        scenario.title, portal, policy, scenario.rate, result, scenario.expect_failures
    )
    row.unmet += [n.removeprefix(UNMET) for n in notes if n.startswith(UNMET)]
    row.notes = [n for n in notes if not n.startswith(UNMET)] + row.notes
    if not settled:
        row.notes.append(f"still open {scenario.settle_s:.0f} s after the traffic ended")
    row.elapsed_s = round(time.monotonic() - started, 1)
    return row
