"""`throttle`: one command starts each part (webhook, dispatcher, operator, migrate) and the tools.

Each command names the settings it needs; a missing or malformed one ends the process with one
line naming the variable (exit code 2), before anything starts. Components are imported lazily so
`throttle --help` is instant and a tool never pays for the others' imports.
"""

from __future__ import annotations

from pathlib import Path

import click

from throttle import __version__
from throttle.cli.console_commands import console_link
from throttle.cli.history_commands import HISTORY_COMMANDS
from throttle.cli.startup import refused_start, settings_for
from throttle.settings import describe


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="throttle")
def main() -> None:
    """Throttle: hold HubSpot workflow executions and release them at the rate you choose."""


@main.command()
@click.option("--port", type=int, default=None, help="Port to listen on (default: PORT or 8080).")
def webhook(port: int | None) -> None:
    """Serve the HubSpot action endpoint, config API, OAuth flow, health and metrics."""
    overrides = {"port": port} if port else {}
    settings = settings_for(
        "redis_url",
        "database_url",
        "hubspot_client_id",
        "hubspot_client_secret",
        "public_url",
        "secret_key_base",
        "encryption_key",
        **overrides,
    )
    # lazy: `throttle --help` in 0.3 s, not 1.0 s (bench/cli_startup.py)
    from throttle.webhook_service.app import serve

    with refused_start():
        serve(settings)


@main.command()
def dispatcher() -> None:
    """Release queued executions at each policy's rate and complete them in HubSpot."""
    settings = settings_for(
        "redis_url", "database_url", "hubspot_client_id", "hubspot_client_secret", "encryption_key"
    )
    # lazy: `throttle --help` in 0.3 s, not 1.0 s (bench/cli_startup.py)
    from throttle.dispatcher.service import serve

    with refused_start():
        serve(settings)


@main.command()
@click.option("--namespace", "-n", multiple=True, help="Watch only these namespaces.")
@click.option(
    "--local",
    type=click.Path(exists=True, path_type=Path),
    default=None,
    help="No cluster: reconcile the ThrottlePolicy manifests in this folder (or file), "
    "and keep watching it.",
)
def operator(namespace: tuple[str, ...], local: Path | None) -> None:
    """Reconcile ThrottlePolicy resources into the engine (kopf operator, one active replica)."""
    settings = settings_for("redis_url")
    # lazy: `throttle --help` in 0.3 s, not 1.0 s (bench/cli_startup.py)
    from throttle.operator.operator_process import serve

    serve(settings, namespaces=list(namespace), local=local)


@main.command()
@click.option("--watch", "-w", is_flag=True, help="Refresh the table until Ctrl-C.")
@click.option("--interval", type=float, default=1.0, show_default=True, help="Seconds (--watch).")
@click.option(
    "--portal", type=click.IntRange(min=0), default=None, help="Only this portal's queues."
)
@click.option(
    "--json", "as_json", is_flag=True, help="Print the figures as JSON (as the console's)."
)
def status(watch: bool, interval: float, portal: int | None, as_json: bool) -> None:
    """Policies at a glance: rate, state, queued, in flight, oldest wait, released, drain."""
    import asyncio
    import contextlib
    import json

    if as_json and watch:
        raise click.BadOptionUsage("--json", "--json prints once; it cannot go with --watch")
    settings = settings_for("redis_url")
    # lazy: `throttle --help` in 0.3 s, not 1.0 s (bench/cli_startup.py)
    from throttle.engine.queue_status import read_json, show

    if as_json:
        click.echo(json.dumps(asyncio.run(read_json(settings, portal)), indent=2))
        return
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(show(settings, watch, interval, portal))


@main.command(name="settings")
@click.option("--markdown", is_flag=True, help="Print a Markdown table (as in README.md).")
def settings_table(markdown: bool) -> None:
    """List every setting: environment variable, default, meaning."""
    from rich.console import Console
    from rich.table import Table

    if markdown:
        click.echo(settings_markdown())
        return
    table = Table("variable", "default", "description", title="Throttle settings")
    for name, default, description in describe():
        table.add_row(name, default, description)
    Console().print(table)


def settings_markdown() -> str:
    """The settings table README.md carries; a test keeps the two the same."""
    lines = ["| variable | default | description |", "| --- | --- | --- |"]
    for name, default, description in describe():
        shown = f"`{default}`" if default else ""
        lines.append(f"| `{name}` | {shown} | {description.replace('|', '/')} |")
    return "\n".join(lines)


def _hubspot_commands() -> None:
    """`throttle hubspot register-action`, `throttle rotate-keys`, `throttle doctor`."""
    # lazy: `throttle --help` in 0.3 s, not 1.0 s (bench/cli_startup.py)
    from throttle.cli.hubspot_commands import COMMANDS

    for command in COMMANDS:
        main.add_command(command)


def _history_commands() -> None:
    """`throttle migrate`, `throttle recover`, `throttle history`."""
    for command in HISTORY_COMMANDS:
        main.add_command(command)


_hubspot_commands()
_history_commands()
main.add_command(console_link)


if __name__ == "__main__":
    main()
