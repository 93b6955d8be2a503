"""`throttle-dev`: the development tools behind one command, beside the product's `throttle`.

`simulator` serves the HubSpot stand-in, `demo` runs everything locally with it driving traffic,
`chaos` runs the fault suite. Each is also `python -m throttle_dev.<tool>`; `demo` and `chaos`
keep their own argument parsers, so their options pass through unchanged.
"""

from __future__ import annotations

import sys

import click

from throttle_dev.chaos.__main__ import main as run_chaos
from throttle_dev.demo.__main__ import main as run_demo
from throttle_dev.simulator.__main__ import main as simulator

PASS_THROUGH = {"ignore_unknown_options": True, "allow_extra_args": True, "help_option_names": []}


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """Throttle's development tools (not in the image)."""


@main.command(context_settings=PASS_THROUGH)
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def demo(args: tuple[str, ...]) -> None:
    """Everything up locally, the HubSpot simulator driving traffic (`--help` for options)."""
    sys.exit(run_demo(list(args)))


@main.command(context_settings=PASS_THROUGH)
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def chaos(args: tuple[str, ...]) -> None:
    """Every fault against real processes, the fault table printed (`--help` for options)."""
    sys.exit(run_chaos(list(args)))


main.add_command(simulator, name="simulator")
