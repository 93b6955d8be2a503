"""`python -m throttle_dev.demo --duration 3m` (what `make demo DURATION=3m` runs)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from rich.console import Console

from throttle_dev.demo.measure import parse_duration
from throttle_dev.demo.runner import DemoError, DemoOptions, run
from throttle_dev.localenv import ServiceError


def main(argv: list[str] | None = None) -> int:
    defaults = DemoOptions()
    parser = argparse.ArgumentParser(
        prog="python -m throttle_dev.demo",
        description="Run Throttle locally with the HubSpot simulator driving real traffic.",
    )
    parser.add_argument("--duration", default="3m", help="how long traffic runs (30s, 3m, 1m30s)")
    parser.add_argument(
        "--dispatchers", type=int, default=defaults.dispatchers, help="dispatcher processes"
    )
    parser.add_argument("--output", type=Path, default=defaults.output, help="plot and summary")
    parser.add_argument(
        "--manifests", type=Path, default=defaults.manifests, help="ThrottlePolicy YAML folder"
    )
    parser.add_argument(
        "--keep", action="store_true", help="keep .local/demo (data and logs) after the run"
    )
    args = parser.parse_args(argv)
    console = Console()
    if not console.is_terminal:  # CI logs, pipes: wide enough for the report's columns
        console = Console(width=160)
    try:
        duration = parse_duration(args.duration)
    except ValueError as exc:
        parser.error(str(exc))
    options = DemoOptions(
        duration_s=duration,
        dispatchers=args.dispatchers,
        output=args.output,
        manifests=args.manifests,
        keep_data=args.keep,
    )
    try:
        outcome = run(options, console)
    except KeyboardInterrupt:
        console.print("\n[yellow]Interrupted: everything was stopped and .local/demo removed.[/]")
        return 130
    except (DemoError, ServiceError) as exc:
        console.print(f"[bold red]The demo could not run:[/] {exc}")
        return 1
    console.print(f"Summary: {outcome.summary}")
    console.print(f"Plot:    {outcome.plot}")
    return 0 if outcome.ok else 1


if __name__ == "__main__":
    sys.exit(main())
