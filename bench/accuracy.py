"""Accuracy: does every policy release at its rate, and never more than `limit + burst` per period,
with 3 dispatchers racing for the same queues over a long run?

Runs the demo's machinery (`throttle_dev.demo.runner`: every component a real process, the app
installed through OAuth, executions sent by the HubSpot simulator) with its own set of policies —
different rates, periods and bursts, all backlogged for the whole run — and judges every release the
engine recorded (its history streams, Redis' clock):
- max releases in any window of the policy's period (sliding, every release as a window start)
  vs `limit + burst`: must never exceed;
- rate error: |achieved - limit/period| / (limit/period) over the backlogged span, burst excluded.

    .venv/bin/python bench/accuracy.py [--duration 5m] [--dispatchers 3]
"""

from __future__ import annotations

import argparse
import platform
import tempfile
from pathlib import Path

import yaml
from rich.console import Console
from rich.table import Table

from throttle_dev.demo.measure import parse_duration
from throttle_dev.demo.runner import DemoOptions, run

WEEKDAYS = ["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"]

POLICIES: list[tuple[str, dict[str, object], dict[str, object]]] = [
    # name, rate (no `burst`: the default its rate implies), other spec fields. The demo's
    # `render` fits daily caps to the run (half of what the rate allows) and moves schedule
    # windows to be open now.
    ("per-second-5", {"limit": 5, "period": "1s"}, {}),
    ("per-minute-600", {"limit": 600, "period": "1m"}, {}),
    ("per-hour-36000", {"limit": 36_000, "period": "1h"}, {}),
    ("bursty-20ps", {"limit": 200, "period": "10s", "burst": 50}, {}),
    ("fast-50ps", {"limit": 50, "period": "1s", "burst": 10}, {}),
    ("slow-1ps", {"limit": 10, "period": "10s", "burst": 2}, {}),
    ("daily-cap-8ps", {"limit": 8, "period": "1s"}, {"dailyCap": {"limit": 1000}}),
    (
        "window-4ps",
        {"limit": 4, "period": "1s"},
        {"schedule": {"windows": [{"days": WEEKDAYS, "start": "00:00", "end": "24:00"}]}},
    ),
    # Not held to the 0.5%: says `burst: 0`, so each late release is lost (docs/policies.md).
    ("strict-10ps", {"limit": 10, "period": "1s", "burst": 0}, {}),
]


def write_manifests(folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for index, (name, rate, extra) in enumerate(POLICIES):
        manifest = {
            "apiVersion": "throttle.dev/v1beta1",
            "kind": "ThrottlePolicy",
            "metadata": {"name": name},
            "spec": {"portalId": 41_000_000 + index, "rate": rate, **extra},
        }
        (folder / f"{index:02d}-{name}.yaml").write_text(yaml.safe_dump(manifest))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", default="2m", help="run length (the recorded run: 10m)")
    parser.add_argument("--dispatchers", type=int, default=3)
    args = parser.parse_args()
    duration = parse_duration(args.duration)
    console = Console(width=140)
    with tempfile.TemporaryDirectory(prefix="throttle-accuracy-") as tmp:
        manifests = Path(tmp) / "manifests"
        write_manifests(manifests)
        outcome = run(
            DemoOptions(
                duration_s=duration,
                dispatchers=args.dispatchers,
                root=Path(tmp) / "stack",
                output=Path(tmp) / "out",
                manifests=manifests,
                duplicate_ratio=0.0,
                live=False,
            ),
            console=Console(quiet=True),
        )
    table = Table(
        title=f"Accuracy: {args.dispatchers} dispatchers, {duration:.0f} s, every policy backlogged"
    )
    for column in (
        "policy",
        "rate",
        "limit/s",
        "achieved/s",
        "rate error",
        "releases",
        "max in a period",
        "limit + burst",
        "lost",
    ):
        table.add_column(column, justify="left" if column == "policy" else "right")
    errors = []
    for p in outcome.policies:
        error = p.rate_error
        if error is not None and not p.name.startswith("strict-"):
            errors.append(error)
        table.add_row(
            p.name,
            p.rate,
            f"{p.target_per_s:.3f}",
            "-" if p.achieved_per_s is None else f"{p.achieved_per_s:.3f}",
            "-" if error is None else f"{error * 100:.2f}%",
            str(p.released),
            str(p.max_window),
            str(p.window_bound),
            str(p.lost),
        )
    console.print(table)
    mean = sum(errors) / len(errors) if errors else float("nan")
    worst = max((p.max_window - p.window_bound for p in outcome.policies), default=0)
    console.print(
        f"mean rate error {mean * 100:.2f}%, worst {max(errors, default=0) * 100:.2f}% "
        f"(strict- rows excluded); worst (max in a period - (limit + burst)) = {worst}; "
        f"problems: {outcome.problems or 'none'}"
    )
    console.print(f"machine: {platform.machine()}, {platform.python_version()}")


if __name__ == "__main__":
    main()
