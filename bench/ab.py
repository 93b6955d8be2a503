"""A/B of two versions of Throttle on this machine: the ingest and engine benchmarks of an older
commit and of the working tree, run interleaved (old, new, new, old, ...) so that drift in the
machine's load hits both alike. Prints each run's figure and the medians with their ratio.

    .venv/bin/python bench/ab.py --old REV [--runs 5] [--only ingest|engine]

The old commit is extracted from the repository's history with a virtualenv of its own under
~/.cache/throttle/releases/<commit>/ (made once, reused: `throttle_dev.releases`, which the
upgrade test uses too); each side runs its own bench/ingest.py and
bench/engine.py with its own interpreter. Figures compared:
- ingest: the webhook's peak requests/s (closed loop, `--connections 32`, one round of 5 s) and
  its server CPU per request;
- engine: releases/s of one dispatcher process (`--items 20000 --no-history`).
"""

from __future__ import annotations

import argparse
import re
import statistics
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from throttle_dev.releases import materialize

REPO = Path(__file__).resolve().parents[1]

Figures = dict[str, float]


def checkout(rev: str) -> tuple[Path, Path]:
    """(source folder, python) of `rev`, made once per commit (throttle_dev.releases)."""
    release = materialize(rev, dev=True)
    return release.src, release.python


def ingest(src: Path, python: Path) -> Figures:
    out = run([str(python), "bench/ingest.py", "--rounds", "1", "--duration", "5",
               "--connections", "32"], src)  # fmt: skip
    row = next(line for line in out.splitlines() if line.startswith("webhook "))
    numbers = [float(x) for x in re.findall(r"\d+(?:\.\d+)?", row[24:])]
    return {"ingest req/s": numbers[0], "ingest cpu us/req": numbers[4]}


def engine(src: Path, python: Path) -> Figures:
    out = run([str(python), "bench/engine.py", "--items", "20000", "--no-history"], src)
    row = next(line for line in out.splitlines() if line.startswith("| 1 |") and "RT" not in line
               and line.count("|") == 8)  # fmt: skip
    return {"engine releases/s": float(row.split("|")[2].replace(",", ""))}


def run(argv: list[str], cwd: Path) -> str:
    done = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=900)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} in {cwd} failed:\n{done.stdout}\n{done.stderr}")
    return done.stdout


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--old", required=True, help="the commit to compare against")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--only", choices=["ingest", "engine"])
    args = parser.parse_args()
    sides = {"old": checkout(args.old), "new": (REPO, Path(sys.executable))}
    benches: list[Callable[[Path, Path], Figures]] = [
        b for b in (ingest, engine) if args.only in (None, b.__name__)
    ]
    seen: dict[tuple[str, str], list[float]] = {}
    for i in range(args.runs):
        order = ["old", "new"] if i % 2 == 0 else ["new", "old"]
        for bench in benches:
            for side in order:
                figures = bench(*sides[side])
                for name, value in figures.items():
                    seen.setdefault((side, name), []).append(value)
                shown = ", ".join(f"{k} {v:,.1f}" for k, v in figures.items())
                print(f"run {i + 1} {side}: {shown}", flush=True)
    print(f"\nA/B: old = {args.old}, new = the working tree; {args.runs} interleaved runs each\n")
    print("| figure | old median | new median | new / old |")
    print("| --- | ---: | ---: | ---: |")
    for name in dict.fromkeys(name for _, name in seen):
        old, new = statistics.median(seen["old", name]), statistics.median(seen["new", name])
        print(f"| {name} | {old:,.1f} | {new:,.1f} | {new / old:.3f} |")


if __name__ == "__main__":
    main()
