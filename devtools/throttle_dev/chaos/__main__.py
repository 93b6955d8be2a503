"""`python -m throttle_dev.chaos [--fast] [--only KEY ...] [--write docs/reliability.md]`

Runs the fault scenarios on one local stack (real Redis, PostgreSQL, webhook, dispatchers and the
HubSpot simulator as processes), prints the fault table, optionally writes it into a Markdown
file between its markers, and exits 1 if any row shows a lost or duplicated execution, a rate
above limit + burst, or a secret in a log.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

from throttle_dev.chaos.faults import FAULTS, Scenario, by_key, run
from throttle_dev.chaos.harness import FaultRow, Harness
from throttle_dev.chaos.load import LoadResult, overload
from throttle_dev.chaos.load import table as load_table
from throttle_dev.chaos.policy_arrival import TITLE as ARRIVAL_TITLE
from throttle_dev.chaos.policy_arrival import harness_for, policy_arrival
from throttle_dev.chaos.table import plain, write_section

ROOT = Path(__file__).resolve().parents[3] / ".local" / "chaos"


async def run_all(
    scenarios: list[Scenario],
    root: Path,
    keep: bool = False,
    load_s: float = 0.0,
    run_arrival: bool = True,
) -> tuple[list[FaultRow], LoadResult | None]:
    harness = Harness(root, keep=keep)
    rows: list[FaultRow] = []
    result: LoadResult | None = None
    await harness.start(portals=len(scenarios) + 1)
    try:
        for scenario in scenarios:
            print(f"==> {scenario.title}", flush=True)
            try:
                row = await run(harness, scenario)
            except Exception as exc:  # one broken scenario must not hide the others' results
                row = FaultRow(scenario.title, notes=[f"scenario error: {exc!r}"[:500]])
            print(plain([row]), flush=True)
            rows.append(row)
        # Last: the overload leaves a quarter of a million executions queued for a paused
        # policy (and their history to copy), which would weigh on every scenario after it.
        if load_s > 0:
            print(f"==> the webhook at 2x its sustainable rate for {load_s:.0f} s", flush=True)
            result = await overload(harness, overload_s=load_s)
            print(load_table(result), flush=True)
    finally:
        await harness.stop()
    if run_arrival:
        print(f"==> {ARRIVAL_TITLE}", flush=True)
        arrival = harness_for(root / "arrival", keep=keep)
        await arrival.start(portals=1)
        try:
            row = await policy_arrival(arrival)
        except Exception as exc:  # one broken scenario must not hide the others' results
            row = FaultRow(ARRIVAL_TITLE, notes=[f"scenario error: {exc!r}"[:500]])
        finally:
            await arrival.stop()
        print(plain([row]), flush=True)
        rows.append(row)
    return rows, result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m throttle_dev.chaos", description=__doc__)
    parser.add_argument("--fast", action="store_true", help="only the fast scenarios")
    parser.add_argument(
        "--only",
        nargs="*",
        default=None,
        help="scenario keys to run ('load': the load test, 'policy-arrival': a new policy)",
    )
    parser.add_argument("--write", type=Path, default=None, help="Markdown file to update")
    parser.add_argument("--root", type=Path, default=ROOT, help="folder for the stack's data")
    parser.add_argument("--keep", action="store_true", help="keep the stack's data and logs")
    parser.add_argument(
        "--load-seconds", type=float, default=60.0, help="overload phase (0: skip the load test)"
    )
    args = parser.parse_args(argv)
    load_s = 0.0 if args.fast else args.load_seconds
    arrival = True
    if args.only:
        scenarios = [by_key(k) for k in args.only if k not in ("load", "policy-arrival")]
        load_s = args.load_seconds if "load" in args.only else 0.0
        arrival = "policy-arrival" in args.only
    else:
        scenarios = [s for s in FAULTS if not (args.fast and s.slow)]
    rows, load = asyncio.run(run_all(scenarios, args.root, args.keep, load_s, arrival))
    print("\nFault table\n")
    print(plain(rows))
    if args.write is not None:
        command = "make chaos" if not (args.fast or args.only) else "python -m throttle_dev.chaos"
        write_section(args.write, rows, command, load_table(load) if load else None)
        print(f"written to {args.write}")
    failed = [r for r in rows if not r.ok]
    for row in failed:
        print(f"FAIL {row.fault}: {'; '.join(row.problems)}", file=sys.stderr)
    if load is not None and load.problems:
        print(f"FAIL load: {'; '.join(load.problems)}", file=sys.stderr)
    return 1 if failed or (load is not None and load.problems) else 0


if __name__ == "__main__":
    sys.exit(main())
