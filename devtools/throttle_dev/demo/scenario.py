"""The demo's story: which policies, which portals, how much traffic, and when things change.

The policies are the ThrottlePolicy manifests in `deploy/examples/demo/`. A few of their values
only make sense relative to the run's length and the clock (a daily cap you can see being hit in
30 s, a schedule window that is open — or closed — right now), so `render` writes adjusted copies
into the demo's folder and records each adjustment, which the demo prints.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import yaml

from throttle.engine.policy import Rate

DAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
PRIORITIES = ("HIGH", "MEDIUM", "LOW", "NONE")
_PERIOD = re.compile(r"^(\d+(?:\.\d+)?)(ms|s|m|h|d)$")
_ISO = re.compile(r"^P(?:(\d+)W)?(?:(\d+)D)?(?:T(?:(\d+)H)?(?:(\d+)M)?(?:(\d+)S)?)?$")


def period_seconds(text: str) -> float:
    """`10s`, `1m`, `1h`, `1d` or ISO-8601 (`PT1M`) → seconds (the CRD's period forms)."""
    match = _PERIOD.match(text)
    if match:
        unit = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}[match.group(2)]
        return float(match.group(1)) * unit
    iso = _ISO.match(text)
    if iso and any(iso.groups()):
        weeks, days, hours, minutes, seconds = (int(g or 0) for g in iso.groups())
        return float(((weeks * 7 + days) * 24 + hours) * 3600 + minutes * 60 + seconds)
    raise ValueError(f"{text!r} is not a period")


@dataclass
class DemoPolicy:
    """One policy of the demo, with what the run expects of it."""

    name: str
    manifest: dict[str, Any]
    path: Path
    executions: int = 0
    releasable_from: float = 0.0
    """Run-relative second from which the policy may release (after a resume)."""
    releasable_until: float = math.inf
    """Run-relative second after which it may not (cap reached is detected, not predicted)."""
    expect_none: bool = False
    """True when the policy must release nothing during the run (a closed window)."""
    resume_at: float | None = None
    priorities: list[str] = field(default_factory=list)
    """The records' priority property values, in turn (the action's `priority` field)."""
    notes: list[str] = field(default_factory=list)
    inline_fields: dict[str, str] | None = None
    """An inline-rate workflow (docs/policies.md, "Inline rates"): no manifest, the executions
    carry these input fields; `manifest` only describes the rate they ask for."""

    @property
    def spec(self) -> dict[str, Any]:
        spec: dict[str, Any] = self.manifest["spec"]
        return spec

    @property
    def portal_id(self) -> int:
        return int(self.spec["portalId"])

    @property
    def action_id(self) -> int | None:
        action = self.spec.get("actionId")
        return int(action) if action is not None else None

    @property
    def limit(self) -> int:
        return int(self.spec["rate"]["limit"])

    @property
    def period_s(self) -> float:
        return period_seconds(str(self.spec["rate"].get("period", "1m")))

    @property
    def burst(self) -> int:
        """The burst in force: a manifest without one gets the default its rate implies."""
        return Rate.model_validate(self.spec["rate"]).burst

    @property
    def rate_per_s(self) -> float:
        return self.limit / self.period_s

    @property
    def daily_cap(self) -> int | None:
        cap = self.spec.get("dailyCap")
        return int(cap["limit"]) if cap else None

    @property
    def named(self) -> bool:
        """Chosen by the action's `policy` input field (it has an action id of its own)."""
        return self.action_id is not None

    def describe_rate(self) -> str:
        period = str(self.spec["rate"].get("period", "1m"))
        text = f"{self.limit}/{period}"
        if self.burst:
            text += f" +{self.burst}"
        return text

    def write(self) -> None:
        self.path.write_text(yaml.safe_dump(self.manifest, sort_keys=False))


@dataclass
class Scenario:
    policies: list[DemoPolicy]
    duration_s: float
    folder: Path

    @property
    def portals(self) -> list[int]:
        return sorted({p.portal_id for p in self.policies})

    def policy(self, name: str) -> DemoPolicy:
        return next(p for p in self.policies if p.name == name)

    @property
    def total_executions(self) -> int:
        return sum(p.executions for p in self.policies)


def load_manifests(source: Path) -> list[dict[str, Any]]:
    docs = []
    for path in sorted(source.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if isinstance(doc, dict) and doc.get("kind") == "ThrottlePolicy":
                docs.append(doc)
    return docs


def _hhmm(moment: datetime) -> str:
    return f"{moment.hour:02d}:{moment.minute:02d}"


def open_window(now: datetime, duration_s: float) -> tuple[dict[str, Any], float]:
    """A window in `now`'s zone open from an hour ago until a little after the run, same day.

    Returns the window and how many seconds from `now` it stays open (it cannot cross midnight).
    """
    start = max(now.replace(hour=0, minute=0, second=0, microsecond=0), now - timedelta(hours=1))
    end = now + timedelta(seconds=duration_s + 120)
    midnight = now.replace(hour=0, minute=0, second=0, microsecond=0) + timedelta(days=1)
    if end >= midnight:
        end_text, open_for = "24:00", (midnight - now).total_seconds()
    else:
        end = end.replace(second=0, microsecond=0) + timedelta(minutes=1)
        end_text, open_for = _hhmm(end), (end - now).total_seconds()
    window = {"days": [DAYS[now.weekday()]], "start": _hhmm(start), "end": end_text}
    return window, open_for


def closed_window(now: datetime) -> dict[str, Any]:
    """A one-hour window today that is at least an hour away from `now` (closed all run)."""
    start, end = ("00:00", "01:00") if now.hour >= 3 else ("22:00", "23:00")
    return {"days": [DAYS[now.weekday()]], "start": start, "end": end}


def render(source: Path, folder: Path, duration_s: float, now: datetime | None = None) -> Scenario:
    """Copy the demo's manifests into `folder`, fitted to a run of `duration_s` starting `now`."""
    folder.mkdir(parents=True, exist_ok=True)
    now = now or datetime.now().astimezone()
    policies = []
    for manifest in load_manifests(source):
        name = str(manifest["metadata"]["name"])
        policy = DemoPolicy(name, manifest, folder / f"{name}.yaml")
        spec = policy.spec
        if policy.daily_cap is not None:
            cap = max(policy.limit, round(policy.rate_per_s * duration_s / 2))
            spec["dailyCap"]["limit"] = cap
            policy.notes.append(f"daily cap set to {cap} (half of what the rate allows in the run)")
        schedule = spec.get("schedule")
        if schedule:
            zone = schedule.setdefault("timeZone", "UTC")
            local = now.astimezone(ZoneInfo(zone))
            if name == "after-hours":
                schedule["windows"] = [closed_window(local)]
                policy.expect_none = True
                policy.notes.append(
                    f"window moved to {schedule['windows'][0]['start']}-"
                    f"{schedule['windows'][0]['end']} {schedule['timeZone']}: closed all run"
                )
            else:
                window, open_for = open_window(local, duration_s)
                schedule["windows"] = [window]
                policy.releasable_until = open_for
                policy.notes.append(
                    f"window moved to {window['days'][0]} {window['start']}-{window['end']} "
                    f"{zone}: open now"
                )
        if name == "priority":
            policy.priorities = list(PRIORITIES)
            policy.notes.append(
                "records carry priority " + "/".join(PRIORITIES) + " in turn (their hs_priority "
                "property, mapped to the action's priority field): higher ones go first"
            )
        if spec.get("paused"):
            policy.resume_at = round(duration_s / 3, 1)
            policy.releasable_from = policy.resume_at
            policy.notes.append(f"paused; the demo resumes it at {policy.resume_at:.0f}s")
        policy.executions = planned_executions(policy, duration_s)
        policy.write()
        policies.append(policy)
    policies.append(inline_workflow(duration_s))
    return Scenario(policies, duration_s, folder)


INLINE_PORTAL = 20240005
"""A portal of its own: beside another policy's traffic its completions would meet the portal's
HubSpot API budget (100 calls per 10 s), which holds them back below the rate."""
INLINE_FIELDS = {
    "rate_count": "5",
    "rate_every": "1",
    "rate_unit": "seconds",
    "queue_name": "newsletter",
}


def inline_workflow(duration_s: float) -> DemoPolicy:
    """A workflow whose builder set the rate in the action's own fields: no manifest, no policy;
    its executions land in the inline queue `inline.q.newsletter`, created by the first one
    (`burst: 1`, as every inline rate with releases under 10 s apart: engine/inline.py)."""
    manifest = {
        "metadata": {"name": "inline.q.newsletter"},
        "spec": {"portalId": INLINE_PORTAL, "rate": {"limit": 5, "period": "1s", "burst": 1}},
    }
    policy = DemoPolicy("inline.q.newsletter", manifest, Path(), inline_fields=dict(INLINE_FIELDS))
    policy.notes.append("an inline rate: 5 every 1 second, set in the action's fields")
    policy.executions = planned_executions(policy, duration_s)
    return policy


def planned_executions(policy: DemoPolicy, duration_s: float) -> int:
    """Enough enrollments to keep the policy backlogged for the whole run, and then some."""
    if policy.expect_none:
        return 150
    releasable = max(0.0, min(duration_s, policy.releasable_until) - policy.releasable_from)
    needed = policy.rate_per_s * releasable * 1.25 + policy.burst + 40
    if policy.daily_cap is not None:
        needed = min(needed, policy.daily_cap * 1.2 + 40)
    return math.ceil(max(needed, 100))


def resume(policy: DemoPolicy) -> None:
    """Edit the manifest as a user would (`paused: false`); the reconciler picks it up."""
    policy.spec["paused"] = False
    policy.write()
