"""What every `throttle` command does before it starts: load the settings it needs, or stop with
one line naming the variable (exit code 2) — never a traceback, never a value."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator
from typing import Any, NoReturn

import click

from throttle.logs import configure_logging
from throttle.settings import Settings, SettingsError, load_settings


def fail(message: str) -> NoReturn:
    click.echo(f"throttle: error: {message}", err=True)
    sys.exit(2)


def settings_for(*required: str, **overrides: Any) -> Settings:
    """Load settings, check the ones this command needs, and set up logging with secrets masked."""
    try:
        settings = load_settings(**overrides).require(*required)
    except SettingsError as exc:
        fail(str(exc))
    configure_logging(settings.log_level, settings.log_format, settings.secret_values())
    return settings


@contextlib.contextmanager
def refused_start() -> Iterator[None]:
    """A deployable that refuses to start on what it found (REDIS_DURABILITY=strict and a Redis
    that does not fsync every write) ends like a bad setting: one line, exit code 2."""
    try:
        yield
    except Exception as exc:
        # lazy: the Redis client stays out of `throttle --help` (bench/cli_startup.py)
        from throttle.engine.redis_client import DurabilityError

        if isinstance(exc, DurabilityError):
            fail(str(exc))
        raise
