"""What happened, per portal: the figures the invariants are judged by.

- completed: blocked callbacks completed (once) before they expired
- duplicates: completion attempts naming a callback already completed
- sent_twice: completion requests naming a callback already completed when they arrived,
  however HubSpot answered them (the client sent a completion twice)
- expired: blocked callbacks whose expiry passed without a completion
- never_completed: blocked callbacks still open (not yet expired) when the report was made
- late: completion attempts after expiry; unknown: attempts naming callbacks the portal never had
- requests / rate_limited / server_errors: API calls, 429s and 5xx answers
- refreshes / client_refusals: token refreshes granted, and refused for the app's client secret
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from throttle_dev.simulator.state import Simulator


@dataclass
class PortalReport:
    portal_id: int
    executions: int = 0
    blocked: int = 0
    completed: int = 0
    duplicates: int = 0
    sent_twice: int = 0
    expired: int = 0
    never_completed: int = 0
    late: int = 0
    unknown: int = 0
    requests: int = 0
    completion_requests: int = 0
    rate_limited: int = 0
    server_errors: int = 0
    unauthorized: int = 0
    refreshes: int = 0
    client_refusals: int = 0
    max_in_window: int = 0
    wait_p50_s: float = 0.0
    wait_p95_s: float = 0.0
    wait_max_s: float = 0.0


@dataclass
class SimReport:
    portals: list[PortalReport] = field(default_factory=list)
    total: PortalReport = field(default_factory=lambda: PortalReport(0))

    def as_dict(self) -> dict[str, Any]:
        return {
            "portals": [asdict(p) for p in self.portals],
            "total": asdict(self.total),
        }

    def portal(self, portal_id: int) -> PortalReport:
        for row in self.portals:
            if row.portal_id == portal_id:
                return row
        return PortalReport(portal_id)


def _quantile(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def build_report(sim: Simulator) -> SimReport:
    now = sim.now()
    rows: dict[int, PortalReport] = {}
    waits: dict[int, list[float]] = {}

    def row(portal_id: int) -> PortalReport:
        return rows.setdefault(portal_id, PortalReport(portal_id))

    for callback in sim.callbacks.values():
        r = row(callback.portal_id)
        r.executions += 1
        if callback.blocked_at is None:
            continue
        r.blocked += 1
        if callback.completed_at is not None:
            r.completed += 1
            waits.setdefault(callback.portal_id, []).append(
                callback.completed_at - callback.blocked_at
            )
        elif callback.expired(now):
            r.expired += 1
        else:
            r.never_completed += 1
    for portal_id, stats in sim.stats.items():
        r = row(portal_id)
        r.duplicates = stats.duplicates
        r.sent_twice = stats.sent_twice
        r.late = stats.late
        r.unknown = stats.unknown
        r.requests = stats.requests
        r.completion_requests = stats.completion_requests
        r.rate_limited = stats.rate_limited
        r.server_errors = stats.server_errors
        r.unauthorized = stats.unauthorized
        r.refreshes = stats.refreshes
        r.client_refusals = stats.client_refusals
        r.max_in_window = stats.max_in_window
    for portal_id, values in waits.items():
        r = rows[portal_id]
        r.wait_p50_s = round(_quantile(values, 0.5), 3)
        r.wait_p95_s = round(_quantile(values, 0.95), 3)
        r.wait_max_s = round(max(values), 3)
    report = SimReport(sorted(rows.values(), key=lambda r: r.portal_id))
    total = report.total
    for r in report.portals:
        for name in PortalReport.__dataclass_fields__:
            if name in ("portal_id", "wait_p50_s", "wait_p95_s"):
                continue
            if name in ("max_in_window", "wait_max_s"):
                setattr(total, name, max(getattr(total, name), getattr(r, name)))
            else:
                setattr(total, name, getattr(total, name) + getattr(r, name))
    all_waits = [w for values in waits.values() for w in values]
    total.wait_p50_s = round(_quantile(all_waits, 0.5), 3)
    total.wait_p95_s = round(_quantile(all_waits, 0.95), 3)
    return report


COLUMNS = (
    ("portal", "portal_id"),
    ("sent", "executions"),
    ("blocked", "blocked"),
    ("completed", "completed"),
    ("dup", "duplicates"),
    ("sent2x", "sent_twice"),
    ("expired", "expired"),
    ("open", "never_completed"),
    ("requests", "requests"),
    ("429", "rate_limited"),
    ("5xx", "server_errors"),
    ("max/win", "max_in_window"),
    ("wait p50", "wait_p50_s"),
    ("wait p95", "wait_p95_s"),
)


def format_report(report: SimReport) -> str:
    """A plain-text table, one row per portal and a total."""
    header = [title for title, _ in COLUMNS]
    lines = [[str(getattr(r, name)) for _, name in COLUMNS] for r in report.portals]
    total = [str(getattr(report.total, name)) for _, name in COLUMNS]
    total[0] = "total"
    widths = [max(len(cells[i]) for cells in [header, total, *lines]) for i in range(len(COLUMNS))]

    def fmt(cells: list[str]) -> str:
        return "  ".join(cell.rjust(width) for cell, width in zip(cells, widths, strict=True))

    rule = "  ".join("-" * w for w in widths)
    return "\n".join([fmt(header), rule, *map(fmt, lines), rule, fmt(total)]) + "\n"
