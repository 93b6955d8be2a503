"""CLI commands over the execution history: `throttle migrate`, `throttle recover`, `throttle
history` (registered on the main group by throttle/cli/main.py).

The history layer returns rows and reports; each command here opens the connections it needs,
calls it once, and prints the answer.
"""

from __future__ import annotations

import asyncio
from datetime import datetime
from typing import TYPE_CHECKING, Any

import click

from throttle.cli.startup import settings_for
from throttle.settings import Settings

if TYPE_CHECKING:
    from throttle.history.recovery import RecoverReport


@click.command()
def migrate() -> None:
    """Apply PostgreSQL migrations (idempotent; safe from several pods at once)."""
    settings = settings_for("database_url")
    # lazy: `throttle --help` in 0.3 s, not 1.0 s (bench/cli_startup.py)
    from throttle.history.migrations import migrate as apply_migrations

    assert settings.database_url is not None
    applied = asyncio.run(apply_migrations(settings.database_url))
    if applied:
        for name in applied:
            click.echo(f"applied {name}")
    else:
        click.echo("database is up to date")


@click.command()
def recover() -> None:
    """Rebuild queues from PostgreSQL history after Redis lost data (never duplicates)."""
    settings = settings_for("redis_url", "database_url")
    report = asyncio.run(_recover(settings))
    click.echo(
        f"re-enqueued {report.queued}; already in Redis {report.already_present}; "
        f"expired {report.expired}; without a policy {len(report.no_policy)}"
    )
    for cb in report.no_policy[:20]:
        click.echo(f"  no policy for {cb}")


async def _recover(settings: Settings) -> RecoverReport:
    # lazy: `throttle --help` in 0.3 s, not 1.0 s (bench/cli_startup.py)
    from throttle.engine.queue import Queue

    # lazy: `throttle --help` in 0.3 s, not 1.0 s (bench/cli_startup.py)
    from throttle.engine.redis_client import redis_client

    # lazy: `throttle --help` in 0.3 s, not 1.0 s (bench/cli_startup.py)
    from throttle.history.pool import create_pool

    # lazy: `throttle --help` in 0.3 s, not 1.0 s (bench/cli_startup.py)
    from throttle.history.recovery import load_policies_for_recovery, recover

    assert settings.database_url is not None
    redis = redis_client(settings)
    pool = await create_pool(settings.database_url)
    try:
        policies = await load_policies_for_recovery(redis, pool)
        queue = Queue(redis, dedupe_seconds=settings.dedupe_seconds)
        return await recover(queue, pool, policies)
    finally:
        await pool.close()
        await redis.aclose()


@click.command()
@click.option("--portal", "portal_id", type=int, required=True, help="HubSpot portal id.")
@click.option("--callback", "callback_id", default=None, help="One execution's callbackId.")
@click.option("--limit", type=int, default=50, show_default=True, help="Most recent N.")
def history(portal_id: int, callback_id: str | None, limit: int) -> None:
    """Show executions' timelines (received, released, completed, outcome) from PostgreSQL."""
    from rich.console import Console
    from rich.table import Table

    settings = settings_for("database_url")
    rows = asyncio.run(_timeline(settings, portal_id, callback_id, limit))
    console = Console()
    if not rows:
        console.print(f"no executions recorded for portal {portal_id}")
        return
    columns = ("callback", "policy", "received", "released", "completed", "outcome", "attempts")

    def when(value: datetime | None) -> str:
        return value.isoformat(timespec="seconds") if value else "-"

    lines = [
        (
            r["callback_id"],
            r["policy"],
            when(r["received_at"]),
            when(r["released_at"]),
            when(r["completed_at"]),
            r["outcome"],
            str(r["attempts"]),
            r["last_error"] or "",
        )
        for r in rows
    ]
    if not console.is_terminal:  # piped: one tab-separated line per execution, for grep and awk
        for line in [(*columns, "last error"), *lines]:
            click.echo("\t".join(line))
        return
    table = Table(*columns, "last error", title=f"portal {portal_id}")
    for line in lines:
        table.add_row(*line)
    console.print(table)


async def _timeline(
    settings: Settings, portal_id: int, callback_id: str | None, limit: int
) -> list[dict[str, Any]]:
    # lazy: `throttle --help` in 0.3 s, not 1.0 s (bench/cli_startup.py)
    from throttle.history.pool import create_pool

    # lazy: `throttle --help` in 0.3 s, not 1.0 s (bench/cli_startup.py)
    from throttle.history.timeline import timeline

    assert settings.database_url is not None
    pool = await create_pool(settings.database_url)
    try:
        return await timeline(pool, portal_id, callback_id, limit)
    finally:
        await pool.close()


HISTORY_COMMANDS = (migrate, recover, history)
