"""`throttle console-link`: a signed, expiring link into one portal's console, for people who do
not sign in with HubSpot (everyone but the users who may install apps)."""

from __future__ import annotations

import time
from urllib.parse import quote

import click

from throttle.cli.startup import fail, settings_for
from throttle.engine.durations import parse_duration

MAX_EXPIRES_S = 90 * 86_400


@click.command(name="console-link")
@click.option("--portal", "portal_id", type=int, required=True, help="The portal the link opens.")
@click.option(
    "--role", type=click.Choice(["viewer", "operator"]), required=True, help="What it may do."
)
@click.option(
    "--expires", default="24h", show_default=True, help="How long the link works (10m, 24h, 7d)."
)
@click.option("--name", "who", default="", help="Who gets it: shown and recorded as link:<name>.")
@click.option(
    "--base-url",
    default="http://localhost:8080",
    show_default=True,
    help="Where people reach the console (the ingress' URL; without /console).",
)
def console_link(portal_id: int, role: str, expires: str, who: str, base_url: str) -> None:
    """Print a console link into one portal with a role (signed with CONSOLE_SESSION_KEY)."""
    settings = settings_for("console_session_key")
    try:
        lifetime = parse_duration(expires).total_seconds()
    except ValueError as exc:
        fail(f"--expires: {exc}")
    if not 0 < lifetime <= MAX_EXPIRES_S:
        fail("--expires must be more than 0 and at most 90 days")
    if portal_id <= 0:
        fail("--portal must be a portal id (a positive number)")
    # lazy: `throttle --help` stays free of aiohttp (bench/cli_startup.py)
    from throttle.webhook_service.console.sessions import Role, SessionSigner

    key = settings.console_session_key
    assert key is not None  # settings_for checked it
    signer = SessionSigner(key.get_secret_value())
    name = f"link:{who or role}"
    granted: Role = "operator" if role == "operator" else "viewer"
    token, _ = signer.issue("link", portal_id, granted, name, time.time() + lifetime)
    click.echo(f"{base_url.rstrip('/')}/console/link?t={quote(token)}")
