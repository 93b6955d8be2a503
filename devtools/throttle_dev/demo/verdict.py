"""The demo's verdict: one row per policy and per portal, a pass/fail line, and the plot.

Everything here works on plain figures gathered by `throttle_dev.demo.runner`, so the end-to-end
test can judge the same `PolicyResult`s the demo prints.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from rich.console import Console
from rich.table import Table

RATE_TOLERANCE = 0.02


@dataclass
class PriorityResult:
    """One priority value of a policy whose records carry one."""

    value: str
    released: int = 0
    wait_p50_s: float = 0.0
    wait_p90_s: float = 0.0


@dataclass
class PolicyResult:
    name: str
    portal_id: int
    rate: str
    target_per_s: float
    achieved_per_s: float | None = None
    measured_releases: int = 0
    sent: int = 0
    blocked: int = 0
    released: int = 0
    completed: int = 0
    held: int = 0
    """Still queued or in flight when the run ended (the backlog the demo built on purpose)."""
    failed: int = 0
    lost: int = 0
    wait_p50_s: float = 0.0
    wait_p90_s: float = 0.0
    wait_p99_s: float = 0.0
    max_window: int = 0
    """Most releases in any window of the policy's period."""
    window_bound: int = 0
    """limit + burst: what `max_window` must never exceed."""
    expect_none: bool = False
    tolerance: float = RATE_TOLERANCE
    notes: list[str] = field(default_factory=list)
    priorities: list[PriorityResult] = field(default_factory=list)
    """Highest first, for a policy whose records carry a priority."""

    @property
    def rate_error(self) -> float | None:
        if self.achieved_per_s is None or not self.target_per_s:
            return None
        return abs(self.achieved_per_s - self.target_per_s) / self.target_per_s

    def problems(self) -> list[str]:
        """Why this policy fails the demo's promises (empty when it keeps them all)."""
        found = []
        if self.lost:
            found.append(f"{self.name}: {self.lost} lost")
        if self.expect_none:
            if self.released:
                found.append(f"{self.name}: released {self.released} outside its window")
        elif self.achieved_per_s is None:
            found.append(f"{self.name}: too few releases while backlogged to measure a rate")
        elif (self.rate_error or 0.0) > self.tolerance:
            found.append(
                f"{self.name}: achieved {self.achieved_per_s:.2f}/s vs limit "
                f"{self.target_per_s:.2f}/s ({(self.rate_error or 0) * 100:.1f}% off, "
                f"tolerance {self.tolerance * 100:.0f}%)"
            )
        if self.window_bound and self.max_window > self.window_bound:
            found.append(
                f"{self.name}: {self.max_window} releases in one period > limit + burst "
                f"{self.window_bound}"
            )
        return found + self.priority_problems()

    def priority_problems(self) -> list[str]:
        """Within the run (far shorter than one priority step, an hour), a higher priority
        goes before every lower one: it waits less, and no fewer of it go."""
        found = []
        for higher, lower in zip(self.priorities, self.priorities[1:], strict=False):
            if not lower.released:
                continue
            if higher.released < lower.released or higher.wait_p50_s > lower.wait_p50_s:
                found.append(
                    f"{self.name}: {higher.value} ({higher.released} released, wait p50 "
                    f"{higher.wait_p50_s:.1f}s) did not go before {lower.value} "
                    f"({lower.released}, {lower.wait_p50_s:.1f}s)"
                )
        return found


@dataclass
class PortalResult:
    portal_id: int
    requests: int = 0
    completion_requests: int = 0
    rate_limited: int = 0
    completed: int = 0
    duplicates: int = 0
    expired: int = 0

    @property
    def callbacks_per_request(self) -> float:
        return self.completed / self.completion_requests if self.completion_requests else 0.0

    def problems(self) -> list[str]:
        found = []
        if self.duplicates:
            found.append(f"portal {self.portal_id}: {self.duplicates} duplicate completions")
        if self.expired:
            found.append(f"portal {self.portal_id}: {self.expired} executions expired")
        return found


def all_problems(
    policies: Sequence[PolicyResult], portals: Sequence[PortalResult], extra: Sequence[str] = ()
) -> list[str]:
    found = list(extra)
    for policy in policies:
        found += policy.problems()
    for portal in portals:
        found += portal.problems()
    return found


def _num(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def policy_table(policies: Sequence[PolicyResult]) -> Table:
    table = Table(title="Per policy (rate measured while backlogged and allowed to release)")
    table.add_column("policy")
    for column in (
        "configured",
        "limit/s",
        "achieved/s",
        "error",
        "wait p50",
        "p90",
        "p99",
        "max/period",
        "sent",
        "completed",
        "held",
        "failed",
        "lost",
    ):
        table.add_column(column, justify="right")
    for p in policies:
        error = p.rate_error
        error_text = "-" if error is None else f"{error * 100:.2f}%"
        if p.expect_none:
            achieved, error_text = f"{p.released} rel.", "expect 0"
        else:
            achieved = _num(p.achieved_per_s)
        style = "red" if p.problems() else "green"
        table.add_row(
            p.name,
            p.rate,
            _num(p.target_per_s),
            achieved,
            f"[{style}]{error_text}[/{style}]",
            f"{p.wait_p50_s:.1f}s",
            f"{p.wait_p90_s:.1f}s",
            f"{p.wait_p99_s:.1f}s",
            f"{p.max_window}/{p.window_bound}" if p.window_bound else "-",
            str(p.sent),
            str(p.completed),
            str(p.held),
            str(p.failed),
            f"[{'red' if p.lost else 'green'}]{p.lost}[/]",
        )
    return table


def priority_table(policy: PolicyResult) -> Table:
    table = Table(title=f"Policy {policy.name}: releases by the records' priority (highest first)")
    for column in ("priority", "released", "wait p50", "wait p90"):
        table.add_column(column, justify="left" if column == "priority" else "right")
    style = "red" if policy.priority_problems() else "green"
    for row in policy.priorities:
        table.add_row(
            f"[{style}]{row.value}[/{style}]",
            str(row.released),
            f"{row.wait_p50_s:.1f}s",
            f"{row.wait_p90_s:.1f}s",
        )
    return table


def portal_table(portals: Sequence[PortalResult]) -> Table:
    table = Table(title="Per portal (as the HubSpot simulator saw it)")
    for column in (
        "portal",
        "completed",
        "API requests",
        "completion requests",
        "callbacks/request",
        "429s",
        "duplicates",
        "expired",
    ):
        table.add_column(column, justify="right")
    for p in portals:
        table.add_row(
            str(p.portal_id),
            str(p.completed),
            str(p.requests),
            str(p.completion_requests),
            f"{p.callbacks_per_request:.1f}",
            f"[{'red' if p.rate_limited else 'green'}]{p.rate_limited}[/]",
            f"[{'red' if p.duplicates else 'green'}]{p.duplicates}[/]",
            str(p.expired),
        )
    return table


def print_report(
    console: Console,
    policies: Sequence[PolicyResult],
    portals: Sequence[PortalResult],
    problems: Sequence[str],
) -> None:
    console.print(policy_table(policies))
    for p in policies:
        if p.notes:
            console.print(f"  [dim]{p.name}: {'; '.join(p.notes)}[/]")
    for p in policies:
        if p.priorities:
            console.print(priority_table(p))
    console.print(portal_table(portals))
    if problems:
        console.print("[bold red]Problems:[/]")
        for problem in problems:
            console.print(f"  - {problem}")
    else:
        console.print(
            "[bold green]0 lost, 0 duplicates, every policy within its limit "
            "(and within tolerance of it while backlogged).[/]"
        )


def plot_releases(
    path: Path,
    series: dict[str, list[int]],
    limits: dict[str, float],
    bounds: dict[str, float] | None = None,
    marks: dict[str, list[tuple[float, str]]] | None = None,
    title: str = "Releases per second per policy",
) -> Path:
    """One panel per policy: releases per second (bars) against its limit (dashed line)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(series)
    columns = 2 if len(names) > 1 else 1
    rows = (len(names) + columns - 1) // columns
    fig, axes = plt.subplots(
        rows, columns, figsize=(6.5 * columns, 2.6 * rows), squeeze=False, sharex=True
    )
    for index, name in enumerate(names):
        ax = axes[index // columns][index % columns]
        counts = series[name]
        ax.bar(range(len(counts)), counts, width=1.0, align="edge", color="#4c78a8", alpha=0.8)
        ax.axhline(limits[name], color="#e45756", linestyle="--", linewidth=1.2, label="limit/s")
        if bounds and name in bounds:
            ax.axhline(bounds[name], color="#999999", linestyle=":", linewidth=1, label="+burst")
        for at, label in (marks or {}).get(name, []):
            ax.axvline(at, color="#54a24b", linewidth=1)
            ax.annotate(label, (at + 0.3, limits[name] * 1.25), fontsize=7, color="#54a24b")
        ax.set_title(name, fontsize=10)
        ax.set_ylabel("releases/s", fontsize=8)
        ax.set_ylim(0, max([limits[name] * 1.6, *(c * 1.1 for c in counts), 1]))
        ax.tick_params(labelsize=7)
        ax.legend(fontsize=7, loc="upper right")
    for index in range(len(names), rows * columns):
        axes[index // columns][index % columns].axis("off")
    for ax in axes[-1]:
        ax.set_xlabel("seconds since traffic started", fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
