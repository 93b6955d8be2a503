"""CLI commands of the HubSpot integration: `throttle hubspot register-action`, `throttle
rotate-keys`, `throttle doctor`, `throttle portal restore`, `throttle portal purge` (registered on
the main group by throttle/cli/main.py)."""

from __future__ import annotations

import asyncio
from typing import Any

import click

from throttle.cli.startup import fail, settings_for


@click.group()
def hubspot() -> None:
    """HubSpot app tools."""


@hubspot.command(name="register-action")
@click.option("--app-id", type=int, default=None, help="The app id (default: HUBSPOT_APP_ID).")
def register_action(app_id: int | None) -> None:
    """Create or update the Throttle action definition for the app (idempotent)."""

    settings = settings_for("public_url")
    app_id = app_id or settings.hubspot_app_id
    if app_id is None:
        fail("HUBSPOT_APP_ID is not set and --app-id was not given: the HubSpot app's id")
    key = settings.hubspot_developer_api_key
    if key is None:
        fail("HUBSPOT_DEVELOPER_API_KEY is not set: the developer API key of the app's account")
    registration = asyncio.run(_register(settings, app_id, key.get_secret_value()))
    verb = "created" if registration.created else "updated"
    click.echo(
        f"action definition {registration.definition_id} {verb} for app {app_id}: "
        f"{registration.action_url}"
    )


async def _register(settings: Any, app_id: int, api_key: str) -> Any:
    import aiohttp

    # lazy: `throttle --help` in 0.3 s, not 1.0 s (bench/cli_startup.py)
    from throttle.hubspot.action_definition import register_action as register

    # lazy: `throttle --help` in 0.3 s, not 1.0 s (bench/cli_startup.py)
    from throttle.hubspot.client import DeveloperAuth, HubSpotClient, HubSpotError

    async with aiohttp.ClientSession() as session:
        client = HubSpotClient(session, settings.hubspot_api_base)
        try:
            return await register(
                client, app_id, DeveloperAuth(api_key=api_key), settings.public_url
            )
        except HubSpotError as exc:
            fail(f"HubSpot refused the action definition: {exc}")


@click.command(name="rotate-keys")
def rotate_keys() -> None:
    """Re-encrypt every stored OAuth token under the newest ENCRYPTION_KEY key."""

    # lazy: `throttle --help` in 0.3 s, not 1.0 s (bench/cli_startup.py)
    from throttle.hubspot.crypto import CryptoError

    settings = settings_for("database_url", "encryption_key")
    try:
        report = asyncio.run(_rotate(settings))
    except CryptoError as exc:
        fail(f"{exc}; add that key back to ENCRYPTION_KEY (after the newest) and run again")
    older = [k.key_id for k in settings.encryption_keys[1:]]
    click.echo(
        f"{report.reencrypted} of {report.rows} token rows re-encrypted under key {report.key_id}."
    )
    if report.remaining:
        # Skipped (SKIP LOCKED) while a token refresh held them: saying "no row uses the old
        # key" now would have the operator remove a key some rows still need.
        fail(
            f"{report.remaining} token row(s) still use an older key (a token refresh held "
            "them during the rotation): run `throttle rotate-keys` again before removing any "
            "key from ENCRYPTION_KEY"
        )
    if older:
        click.echo(
            f"No row uses key(s) {', '.join(older)} any more: remove them from ENCRYPTION_KEY."
        )


async def _rotate(settings: Any) -> Any:
    import asyncpg

    # lazy: `throttle --help` in 0.3 s, not 1.0 s (bench/cli_startup.py)
    from throttle.hubspot.crypto import TokenCipher

    # lazy: `throttle --help` in 0.3 s, not 1.0 s (bench/cli_startup.py)
    from throttle.hubspot.tokens import TokenStore

    pool = await asyncpg.create_pool(settings.database_url, min_size=1, max_size=2)
    try:
        return await TokenStore(pool, TokenCipher(settings.encryption_keys)).rotate()
    finally:
        await pool.close()


@click.command()
def doctor() -> None:
    """Check Redis, PostgreSQL, migrations, policies, each portal's token and the action."""
    import sys

    from rich.console import Console
    from rich.table import Table

    # lazy: `throttle --help` in 0.3 s, not 1.0 s (bench/cli_startup.py)
    from throttle.cli.doctor import run_checks

    settings = settings_for()
    checks = asyncio.run(run_checks(settings))
    table = Table("check", "status", "detail", title="throttle doctor")
    colour = {"ok": "green", "warn": "yellow", "fail": "red"}
    for check in checks:
        table.add_row(check.name, f"[{colour[check.status]}]{check.status}[/]", check.detail)
    Console().print(table)
    sys.exit(1 if any(c.status == "fail" for c in checks) else 0)


@click.group()
def portal() -> None:
    """Portals that installed the app."""


@portal.command()
@click.argument("portal_id", type=int)
def restore(portal_id: int) -> None:
    """Undo an uninstall while the portal's tokens are kept (UNINSTALL_GRACE_DAYS)."""
    settings = settings_for("database_url", "encryption_key")
    result, reason = asyncio.run(_restore(settings, portal_id))
    match result:
        case "restored":
            click.echo(
                f"portal {portal_id} restored (it had been {reason}); webhook pods and "
                "dispatchers pick it up within seconds, and its next token refresh tells whether "
                "HubSpot still honours its tokens"
            )
        case "installed":
            click.echo(f"portal {portal_id} is installed: nothing to restore")
        case "unknown":
            fail(f"portal {portal_id} never installed the app")
        case _:
            fail(
                f"portal {portal_id} was {reason} and its tokens are no longer kept: "
                "install the app again (PUBLIC_URL/api/oauth/authorize)"
            )


async def _restore(settings: Any, portal_id: int) -> tuple[str, str]:
    # lazy: `throttle --help` in 0.3 s, not 1.0 s (bench/cli_startup.py)
    from throttle.history.pool import create_pool

    # lazy: `throttle --help` in 0.3 s, not 1.0 s (bench/cli_startup.py)
    from throttle.hubspot.crypto import TokenCipher

    # lazy: `throttle --help` in 0.3 s, not 1.0 s (bench/cli_startup.py)
    from throttle.hubspot.tokens import TokenStore

    pool = await create_pool(settings.database_url, max_size=2)
    try:
        store = TokenStore(pool, TokenCipher(settings.encryption_keys))
        before = await store.installation(portal_id)
        reason = (before.uninstall_reason if before else None) or "uninstalled"
        return await store.restore(portal_id), reason
    finally:
        await pool.close()


@portal.command()
@click.argument("portal_id", type=int)
@click.option("--yes", is_flag=True, help="Delete now (without it: only say what would go).")
def purge(portal_id: int, yes: bool) -> None:
    """Delete a portal's data: tokens, queued executions (never released), history; recorded.

    An installed portal is uninstalled first (its executions are answered FAIL_CONTINUE from
    then on). Without --yes nothing is deleted: it prints what would be."""
    settings = settings_for("database_url", "redis_url", "encryption_key")
    # lazy: `throttle --help` in 0.3 s, not 1.0 s (bench/cli_startup.py)
    from throttle.cli.portal_purge import purge_or_describe

    asyncio.run(purge_or_describe(settings, portal_id, yes))


COMMANDS = (hubspot, rotate_keys, doctor, portal)
