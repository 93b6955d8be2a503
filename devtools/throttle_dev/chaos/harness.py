"""A running stack plus what a fault scenario needs around it: portals, policies, traffic, judging.

Everything goes through the product's own doors — the OAuth install flow, the config API with the
bearer token, the simulator's driver (signed executions, HubSpot's retries) and its admin API for
faults — so a scenario breaks the system the way production breaks, not through a back door.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from throttle.engine import keys
from throttle_dev.demo.install import client_session, install_portal
from throttle_dev.demo.measure import max_in_window
from throttle_dev.demo.release_log import read_release_log
from throttle_dev.releases import Release
from throttle_dev.stack import Stack, StackConfig, throttle_argv

POLICY_REFRESH_WAIT_S = 3.0
"""Webhook pods reload policies every 2 s: wait this long after writing one."""
INSTALL_REFRESH_WAIT_S = 6.5
"""Webhook pods reload installed portals every 5 s."""
TOKEN_TTL_S = 20
"""Access tokens the simulator hands out live this long (HubSpot's: 1800 s), so a fault can
outlast a token's life within a scenario; dispatchers refresh them at half-life."""
FIRST_PORTAL = 910001
SECRET_SETTINGS = (
    "hubspot_client_secret",
    "encryption_key",
    "secret_key_base",
    "throttle_api_token",
)


@dataclass(frozen=True)
class Traffic:
    """The enrollments HubSpot sends for one scenario."""

    executions: int = 150
    rate_per_s: float = 60.0
    duplicate_ratio: float = 0.05
    """Share delivered twice (HubSpot's retries): must never be queued or completed twice."""


@dataclass(frozen=True)
class Rate:
    limit: int = 40
    period_s: int = 1
    burst: int = 5
    daily_cap: int = 0
    """Releases per UTC day (0: none); the policy's `dailyCap`."""

    def spec(self) -> dict[str, Any]:
        return {"limit": self.limit, "period": f"{self.period_s}s", "burst": self.burst}

    def policy(self) -> dict[str, Any]:
        """The policy's rate fields for the config API."""
        fields: dict[str, Any] = {"rate": self.spec()}
        if self.daily_cap:
            fields["dailyCap"] = {"limit": self.daily_cap}
        return fields


@dataclass
class FaultRow:
    """One line of the fault table, with the evidence behind it."""

    fault: str
    sent: int = 0
    blocked: int = 0
    completed: int = 0
    failed: int = 0
    lost: int = 0
    duplicates: int = 0
    max_window: int = 0
    allowed: int = 0
    failure_reasons: dict[str, int] = field(default_factory=dict)
    answers: dict[str, int] = field(default_factory=dict)
    gave_up: int = 0
    secrets_in_logs: list[str] = field(default_factory=list)
    uninstalled: str | None = None
    """The portal's uninstall reason, if the run uninstalled it."""
    unmet: list[str] = field(default_factory=list)
    """Promises the scenario checked itself while the fault lasted, and found broken."""
    notes: list[str] = field(default_factory=list)
    elapsed_s: float = 0.0
    expect_failures: bool = False

    @property
    def problems(self) -> list[str]:
        found = []
        if self.lost:
            found.append(f"{self.lost} blocked executions neither completed nor failed with reason")
        if self.gave_up:
            found.append(f"HubSpot gave up delivering {self.gave_up} executions")
        if self.duplicates:
            found.append(f"{self.duplicates} completion attempts for already completed callbacks")
        if self.max_window > self.allowed:
            found.append(
                f"{self.max_window} completions in one window, limit + burst {self.allowed}"
            )
        if self.failed and not self.expect_failures:
            found.append(f"{self.failed} executions failed: {self.failure_reasons}")
        if self.blocked == 0:
            found.append("no execution was blocked: the scenario tested nothing")
        if self.secrets_in_logs:
            found.append(f"secrets in logs: {', '.join(self.secrets_in_logs)}")
        if self.uninstalled and not self.expect_failures:
            found.append(f"the portal was uninstalled ({self.uninstalled})")
        found += self.unmet
        return found

    @property
    def ok(self) -> bool:
        return not self.problems


class Harness:
    """One stack for many scenarios; each scenario gets its own portal and policy."""

    def __init__(
        self,
        root: Path,
        dispatchers: int = 2,
        lease_seconds: float = 12.0,
        keep: bool = False,
        webhooks: int = 1,
        token_ttl_s: int = TOKEN_TTL_S,
        release: Release | None = None,
    ) -> None:
        """`release`: what the stack starts with (an earlier release for an upgrade run)."""
        self.token_ttl_s = token_ttl_s
        self.stack = Stack(
            StackConfig(
                root=root,
                dispatchers=dispatchers,
                keep_data=keep,
                webhooks=webhooks,
                release=release,
                simulator_args=["--token-ttl", str(token_ttl_s)],
                settings={
                    # Held executions of a killed dispatcher come back after the lease: short
                    # here so the suite runs in minutes (the chart's default is 60 s), yet
                    # long enough for a completion request's 10 s deadline and its margin.
                    "dispatcher_lease_seconds": str(lease_seconds),
                    # Each dispatcher may have a call of a portal out: with HubSpot answering
                    # in seconds, one call at a time across the stack makes a backlog of
                    # 1,000 take minutes (the chart's default is 1).
                    "hubspot_portal_concurrency": "2",
                    "log_level": "INFO",
                },
            )
        )
        self.session: aiohttp.ClientSession | None = None
        self._portals: list[int] = []
        self._next_portal = FIRST_PORTAL

    # --- lifecycle -----------------------------------------------------------------------------
    async def start(self, portals: int) -> None:
        await asyncio.to_thread(self.stack.start)
        self.session = client_session()
        for _ in range(portals):
            portal = self._next_portal
            self._next_portal += 1
            await install_portal(self.http, self.stack.webhook_url, portal)
            self._portals.append(portal)
        await asyncio.sleep(INSTALL_REFRESH_WAIT_S)

    async def stop(self) -> None:
        if self.session is not None:
            await self.session.close()
        await asyncio.to_thread(self.stack.stop)

    @property
    def http(self) -> aiohttp.ClientSession:
        assert self.session is not None, "start the harness first"
        return self.session

    def portal(self) -> int:
        """An installed portal no scenario has used yet."""
        if not self._portals:
            raise RuntimeError("no installed portal left: start the harness with more")
        return self._portals.pop(0)

    # --- the product's doors -------------------------------------------------------------------
    async def put_policy(self, portal: int, name: str, rate: Rate, paused: bool = False) -> None:
        token = self.stack.settings["throttle_api_token"]
        body = {**rate.policy(), "expiration": "P1D", "paused": paused}
        async with self.http.put(
            f"{self.stack.webhook_url}/api/config/{portal}/policies/{name}",
            json=body,
            headers={"Authorization": f"Bearer {token}"},
        ) as response:
            if response.status not in (200, 201):
                raise RuntimeError(f"config API: HTTP {response.status} {await response.text()}")
        await asyncio.sleep(POLICY_REFRESH_WAIT_S)

    async def drive(
        self, portal: int, policy: str, traffic: Traffic, webhook: str = "webhook"
    ) -> dict[str, Any]:
        """HubSpot enrolling records: signed executions, retried on 429/5xx/timeouts, sent to
        one webhook process (by its component name)."""
        plan = {
            "actionUrl": f"{self.stack.webhook_url_of(webhook)}/api/hubspot/action",
            "executions": traffic.executions,
            "portals": [portal],
            "policy": policy,
            "rate_per_s": traffic.rate_per_s,
            "duplicate_ratio": traffic.duplicate_ratio,
            "concurrency": 16,
            # HubSpot retries 5xx/429 for days; 12 doublings from 0.25 s cover any outage here.
            "max_attempts": 12,
            "retry_backoff_s": 0.25,
            "timeout_s": 10.0,
        }
        timeout = aiohttp.ClientTimeout(total=None)
        async with self.http.post(
            f"{self.stack.simulator_url}/_sim/drive", json=plan, timeout=timeout
        ) as response:
            result: dict[str, Any] = await response.json()
            if response.status != 200:
                raise RuntimeError(f"simulator driver: HTTP {response.status} {result}")
            return result

    async def faults(self, **changes: Any) -> None:
        async with self.http.post(f"{self.stack.simulator_url}/_sim/faults", json=changes) as r:
            if r.status != 200:
                raise RuntimeError(f"simulator faults: HTTP {r.status} {await r.text()}")

    async def clear_faults(self) -> None:
        await self.faults(
            error_ratio=0.0,
            error_after_apply_ratio=0.0,
            latency_ms=0.0,
            storm_until=0.0,
            completion_answer_delay_ms=0.0,
            reject_client_secret_until=0.0,
        )

    async def revoke(self, portal: int) -> None:
        async with self.http.post(
            f"{self.stack.simulator_url}/_sim/revoke",
            json={"portalId": portal, "accessTokens": True},
        ) as r:
            r.raise_for_status()

    async def report(self, portal: int) -> dict[str, Any]:
        async with self.http.get(f"{self.stack.simulator_url}/_sim/report") as r:
            data: dict[str, Any] = await r.json()
        for row in data["portals"]:
            if row["portal_id"] == portal:
                return dict(row)
        return {"portal_id": portal, "blocked": 0, "completed": 0, "duplicates": 0}

    async def completions(self, portal: int) -> list[tuple[str, float]]:
        async with self.http.get(
            f"{self.stack.simulator_url}/_sim/completions", params={"portalId": str(portal)}
        ) as r:
            rows = (await r.json())["completions"]
        return [(row["callbackId"], float(row["at"])) for row in rows]

    async def failures(self, portal: int) -> dict[str, str]:
        """Executions the history records as failed, with their reason (PostgreSQL)."""
        import asyncpg

        conn = await asyncpg.connect(self.stack.database_url, timeout=5)
        try:
            rows = await conn.fetch(
                "SELECT callback_id, coalesce(last_error, '') AS reason FROM action_executions "
                "WHERE portal_id = $1 AND outcome = 'failed'",
                portal,
            )
        finally:
            await conn.close()
        return {r["callback_id"]: r["reason"] for r in rows}

    async def uninstall_reason(self, portal: int) -> str | None:
        """Why the portal is uninstalled (PostgreSQL), or None while it is installed."""
        import asyncpg

        conn = await asyncpg.connect(self.stack.database_url, timeout=5)
        try:
            row = await conn.fetchrow(
                "SELECT status, uninstall_reason FROM hubspot_portals WHERE portal_id = $1", portal
            )
        finally:
            await conn.close()
        if row is None or row["status"] == "installed":
            return None
        return str(row["uninstall_reason"] or "no reason recorded")

    async def readyz(self) -> dict[str, Any]:
        """The webhook's /readyz body (its `faults` name what stops completions)."""
        async with self.http.get(f"{self.stack.webhook_url}/readyz") as r:
            body: dict[str, Any] = await r.json()
            return body

    async def dispatchers_seen(self) -> list[tuple[dict[str, Any], str]]:
        """Each running dispatcher's /healthz body and /metrics text."""
        seen = []
        for name in self.stack.dispatcher_names:
            component = self.stack.components[name]
            if not component.running:
                continue
            base = f"http://127.0.0.1:{component.port}"
            async with self.http.get(base + "/healthz") as r:
                health = await r.json()
            async with self.http.get(base + "/metrics") as r:
                seen.append((health, await r.text()))
        return seen

    async def doctor(self) -> tuple[int, str]:
        """`throttle doctor`, as an operator runs it: exit code and what it printed."""
        proc = await asyncio.create_subprocess_exec(
            *throttle_argv("doctor"),
            env={**self.stack.environment(), "COLUMNS": "250"},
            cwd=self.stack.root,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        async with asyncio.timeout(120):
            out, _ = await proc.communicate()
        return int(proc.returncode or 0), out.decode(errors="replace")

    async def recover(self) -> str:
        """`throttle recover`, as an operator runs it after losing Redis."""
        proc = await asyncio.create_subprocess_exec(
            *throttle_argv("recover"),
            env=self.stack.environment(),
            cwd=self.stack.root,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        async with asyncio.timeout(120):
            out, _ = await proc.communicate()
        text = out.decode(errors="replace").strip()
        if proc.returncode != 0:
            raise RuntimeError(f"throttle recover exited {proc.returncode}: {text[-2000:]}")
        return text

    # --- judging -------------------------------------------------------------------------------
    async def settle(self, portal: int, timeout_s: float) -> bool:
        """Wait until every blocked execution of the portal is completed or failed; False if
        some were still open after `timeout_s`."""
        deadline = time.monotonic() + timeout_s
        stable_since: float | None = None
        last: tuple[int, int, int] | None = None
        while time.monotonic() < deadline:
            report = await self.report(portal)
            try:
                failed = await self.failures(portal)
            except (OSError, TimeoutError):
                failed = {}
            done = {cb for cb, _ in await self.completions(portal)} | set(failed)
            now = (report["blocked"], len(done), report.get("duplicates", 0))
            if now[0] and now[1] >= now[0]:
                if now == last and stable_since is not None:
                    if time.monotonic() - stable_since > 2.0:
                        return True
                else:
                    stable_since = time.monotonic()
            last = now
            await asyncio.sleep(1.0)
        return False

    async def release_times(self, portal: int, policy: str) -> list[float]:
        """Release instants the engine recorded (Redis TIME inside `take`; the last release of
        each execution: PostgreSQL history plus what the streams still hold)."""
        import redis.asyncio as aioredis

        client: Any = aioredis.Redis.from_url(self.stack.redis_url)
        try:
            log = await read_release_log(client, self.stack.database_url, [portal])
        finally:
            await client.aclose()
        return log.times(keys.policy_key(portal, policy))

    async def judge(
        self,
        fault: str,
        portal: int,
        policy: str,
        rate: Rate,
        drive: dict[str, Any],
        expect_failures: bool,
    ) -> FaultRow:
        report = await self.report(portal)
        completed = await self.completions(portal)
        failed = await self.failures(portal)
        completed_ids = {cb for cb, _ in completed}
        failed_only = {cb: r for cb, r in failed.items() if cb not in completed_ids}
        row = FaultRow(
            fault=fault,
            sent=int(drive.get("sent", 0)),
            blocked=int(report["blocked"]),
            completed=len(completed_ids),
            failed=len(failed_only),
            # a completion sent again counts, however HubSpot answered it
            duplicates=max(int(report.get("duplicates", 0)), int(report.get("sent_twice", 0))),
            max_window=max_in_window(await self.release_times(portal, policy), rate.period_s),
            allowed=rate.limit + rate.burst,
            failure_reasons=dict(Counter(failed_only.values())),
            answers=dict(drive.get("answers", {})),
            gave_up=int(drive.get("gave_up", 0)),
            expect_failures=expect_failures,
        )
        row.lost = max(0, row.blocked - row.completed - row.failed)
        seen = max_in_window([at for _, at in completed], rate.period_s)
        if seen > row.allowed:
            row.notes.append(
                f"HubSpot saw up to {seen} completions in one {rate.period_s} s window "
                "(completion latency varies per call; the rate governs releases)"
            )
        if len(completed) != len(completed_ids):
            row.notes.append(f"{len(completed) - len(completed_ids)} callbacks completed twice")
            row.duplicates += len(completed) - len(completed_ids)
        row.secrets_in_logs = self.secrets_in_logs()
        row.uninstalled = await self.uninstall_reason(portal)
        return row

    def secrets_in_logs(self) -> list[str]:
        """Names of secrets whose value appears in any component's log (the simulator, which
        plays HubSpot and logs HubSpot's side, is not ours and not searched)."""
        logs = self.stack.root / "logs"
        text = "\n".join(
            p.read_text(errors="replace")
            for p in sorted(logs.glob("*.log"))
            if not p.name.startswith("simulator")
        )
        found = []
        for name in SECRET_SETTINGS:
            value = self.stack.settings.get(name, "")
            for part in value.split(","):
                if len(part) >= 8 and part in text:
                    found.append(name.upper())
        return sorted(set(found))


def as_json(rows: list[FaultRow]) -> str:
    return json.dumps(
        [{**r.__dict__, "ok": r.ok, "problems": r.problems} for r in rows], indent=2, default=str
    )
