"""Why the `throttle` command imports its components lazily: `throttle --help` against a start
that imports every component up front, median of N runs each, interleaved.

`.venv/bin/python bench/cli_startup.py [--runs 7]`
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

THROTTLE = str(Path(sys.executable).parent / "throttle")
EAGER = (
    "import throttle.cli.main, throttle.webhook_service.app, throttle.dispatcher.service, "
    "throttle.operator.operator_process, throttle.cli.doctor, throttle.history.migrations, "
    "throttle.history.recovery, throttle.history.timeline, throttle.engine.queue_status"
)


def seconds(argv: list[str]) -> float:
    started = time.perf_counter()
    subprocess.run(argv, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=7)
    runs = parser.parse_args().runs
    lazy: list[float] = []
    eager: list[float] = []
    for _ in range(runs):
        lazy.append(seconds([THROTTLE, "--help"]))
        eager.append(seconds([sys.executable, "-c", EAGER]))
    print("| start | median s | min s | max s |")
    print("| --- | ---: | ---: | ---: |")
    for name, xs in (("throttle --help (lazy)", lazy), ("every component imported", eager)):
        print(f"| {name} | {statistics.median(xs):.2f} | {min(xs):.2f} | {max(xs):.2f} |")
    print(f"ratio eager / lazy = {statistics.median(eager) / statistics.median(lazy):.1f}")


if __name__ == "__main__":
    main()
