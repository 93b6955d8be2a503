"""The schema as numbered SQL files shipped in the package (`migrations/NNNN_name.sql`).

Each file is applied once, in order, in its own transaction, and recorded in
`schema_migrations`; the chart's migration Job and any pod may run `throttle migrate` at the same
time, because one advisory lock makes the second run wait and then find nothing left to do.
"""

from __future__ import annotations

import re
from importlib.resources import files

import asyncpg

MIGRATION_LOCK = 0x7468726F  # "thro": one pg_advisory_lock id for every pod running migrate
_MIGRATION_FILE = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")


def migration_files() -> list[tuple[int, str, str]]:
    """(version, name, sql) of every migration shipped in throttle/history/migrations, in order."""
    folder = files("throttle.history").joinpath("migrations")
    out = []
    for entry in folder.iterdir():
        match = _MIGRATION_FILE.match(entry.name)
        if match:
            out.append((int(match[1]), match[2], entry.read_text(encoding="utf-8")))
    return sorted(out)


async def migrate(dsn: str) -> list[str]:
    """Apply pending migrations, each in its own transaction; returns those applied.

    A session advisory lock serialises concurrent runs (several pods starting at once): the
    second waits, then finds nothing left to do.
    """
    conn = await asyncpg.connect(dsn, timeout=10)
    applied: list[str] = []
    try:
        await conn.execute("SELECT pg_advisory_lock($1)", MIGRATION_LOCK)
        try:
            await conn.execute(
                """CREATE TABLE IF NOT EXISTS schema_migrations (
                       version integer PRIMARY KEY,
                       name text NOT NULL,
                       applied_at timestamptz NOT NULL DEFAULT now())"""
            )
            done = {r["version"] for r in await conn.fetch("SELECT version FROM schema_migrations")}
            for version, name, sql in migration_files():
                if version in done:
                    continue
                async with conn.transaction():
                    await conn.execute(sql)
                    await conn.execute(
                        "INSERT INTO schema_migrations (version, name) VALUES ($1, $2)",
                        version,
                        name,
                    )
                applied.append(f"{version:04d}_{name}")
        finally:
            await conn.execute("SELECT pg_advisory_unlock($1)", MIGRATION_LOCK)
    finally:
        await conn.close()
    return applied


async def pending_migrations(dsn: str) -> list[str]:
    """Migrations not applied yet (for readiness checks and `throttle doctor`)."""
    conn = await asyncpg.connect(dsn, timeout=10)
    try:
        exists = await conn.fetchval("SELECT to_regclass('schema_migrations') IS NOT NULL")
        done = (
            {r["version"] for r in await conn.fetch("SELECT version FROM schema_migrations")}
            if exists
            else set()
        )
    finally:
        await conn.close()
    return [f"{v:04d}_{n}" for v, n, _ in migration_files() if v not in done]
