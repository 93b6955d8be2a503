"""Execution history in PostgreSQL: migrations, batched writes, retention, and rebuilding queues.

PostgreSQL is never on the hot path. The Lua scripts append events to Redis streams; history
writers (dispatcher/history_writer.py) fold them into rows and upsert them here in batches.
Because every received execution reaches this table within seconds, `recover` can rebuild the
queues if Redis ever loses its data.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib.resources import files
from typing import Any

import asyncpg

from throttle.engine import keys
from throttle.engine.policy import Policy
from throttle.engine.policy_index import registry_load
from throttle.engine.queue import Queue, QueueItem
from throttle.engine.redis_client import redis_client
from throttle.settings import Settings

log = logging.getLogger(__name__)

MIGRATION_LOCK = 0x7468726F  # "thro": one pg_advisory_lock id for every pod running migrate
_MIGRATION_FILE = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")
TERMINAL = ("completed", "failed", "expired")


async def create_pool(dsn: str, *, min_size: int = 1, max_size: int = 5) -> asyncpg.Pool:
    return await asyncpg.create_pool(
        dsn, min_size=min_size, max_size=max_size, timeout=10, command_timeout=30
    )


# --- migrations -----------------------------------------------------------------------------------
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


def migrate_command(settings: Settings) -> None:
    import click

    assert settings.database_url is not None
    applied = asyncio.run(migrate(settings.database_url))
    if applied:
        for name in applied:
            click.echo(f"applied {name}")
    else:
        click.echo("database is up to date")


# --- rows -----------------------------------------------------------------------------------------
_RANK = {"queued": 0, "released": 1, "completed": 2, "failed": 2, "expired": 2}


@dataclass
class ExecutionRow:
    """What a batch of events says about one execution (folded in stream order)."""

    callback_id: str
    portal_id: int
    policy: str
    queue: str
    workflow_id: int | None = None
    action_definition_id: int | None = None
    object_type: str | None = None
    object_id: str | None = None
    input_fields: str | None = None
    received_at: datetime | None = None
    expires_at: datetime | None = None
    released_at: datetime | None = None
    completed_at: datetime | None = None
    outcome: str = "queued"
    rank: int = 0
    attempts: int = 0
    last_error: str | None = None

    def advance(self, outcome: str, rank: int | None = None) -> None:
        new_rank = _RANK[outcome] if rank is None else rank
        if new_rank >= self.rank:
            self.outcome, self.rank = outcome, new_rank


_UPSERT = """
INSERT INTO action_executions AS t (
    callback_id, portal_id, policy, queue, workflow_id, action_definition_id, object_type,
    object_id, input_fields, received_at, expires_at, released_at, completed_at, outcome,
    attempts, last_error, outcome_rank, updated_at)
SELECT u.cb, u.portal, u.policy, u.queue, u.wf, u.act, u.ot, u.oid, u.inputs::jsonb, u.recv,
       u.exp, u.rel, u.done, u.outcome, u.att, u.err, u.rank, now()
FROM unnest($1::text[], $2::bigint[], $3::text[], $4::text[], $5::bigint[], $6::bigint[],
            $7::text[], $8::text[], $9::text[], $10::timestamptz[], $11::timestamptz[],
            $12::timestamptz[], $13::timestamptz[], $14::text[], $15::int[], $16::text[],
            $17::int[])
     AS u(cb, portal, policy, queue, wf, act, ot, oid, inputs, recv, exp, rel, done, outcome,
          att, err, rank)
ON CONFLICT (callback_id) DO UPDATE SET
    workflow_id = COALESCE(t.workflow_id, EXCLUDED.workflow_id),
    action_definition_id = COALESCE(t.action_definition_id, EXCLUDED.action_definition_id),
    object_type = COALESCE(t.object_type, EXCLUDED.object_type),
    object_id = COALESCE(t.object_id, EXCLUDED.object_id),
    input_fields = COALESCE(t.input_fields, EXCLUDED.input_fields),
    received_at = COALESCE(t.received_at, EXCLUDED.received_at),
    expires_at = COALESCE(EXCLUDED.expires_at, t.expires_at),
    released_at = COALESCE(EXCLUDED.released_at, t.released_at),
    completed_at = COALESCE(EXCLUDED.completed_at, t.completed_at),
    outcome = CASE WHEN EXCLUDED.outcome_rank >= t.outcome_rank
                   THEN EXCLUDED.outcome ELSE t.outcome END,
    outcome_rank = GREATEST(t.outcome_rank, EXCLUDED.outcome_rank),
    attempts = GREATEST(t.attempts, EXCLUDED.attempts),
    last_error = COALESCE(EXCLUDED.last_error, t.last_error),
    updated_at = now()
"""


async def write_rows(conn: Any, rows: Sequence[ExecutionRow]) -> None:
    """Upsert one batch (one row per callback id) in a single statement."""
    if not rows:
        return
    cols: list[list[Any]] = [[] for _ in range(17)]
    for r in rows:
        values = (
            r.callback_id,
            r.portal_id,
            r.policy,
            r.queue,
            r.workflow_id,
            r.action_definition_id,
            r.object_type,
            r.object_id,
            r.input_fields,
            r.received_at,
            r.expires_at,
            r.released_at,
            r.completed_at,
            r.outcome,
            r.attempts,
            r.last_error,
            r.rank,
        )
        for col, value in zip(cols, values, strict=True):
            col.append(value)
    await conn.execute(_UPSERT, *cols)


def _ts(micros: str | None) -> datetime | None:
    return datetime.fromtimestamp(int(micros) / 1e6, UTC) if micros else None


def fold_events(events: Iterable[dict[str, str]]) -> list[ExecutionRow]:
    """Turn stream events (in order) into one row per callback id."""
    rows: dict[str, ExecutionRow] = {}

    def row(cb: str, event: dict[str, str]) -> ExecutionRow:
        found = rows.get(cb)
        if found is None:
            portal, _, policy = event.get("pol", "0:?").partition(":")
            found = rows[cb] = ExecutionRow(cb, int(portal), policy, event.get("q", "shared"))
        return found

    for e in events:
        kind = e.get("t")
        ts = _ts(e.get("ts"))
        if kind == "recv":
            r = row(e["cb"], e)
            body = json.loads(e.get("body") or "{}")
            r.workflow_id = body.get("workflow")
            r.action_definition_id = body.get("action")
            r.object_type = body.get("objectType")
            r.object_id = None if body.get("objectId") is None else str(body.get("objectId"))
            r.input_fields = json.dumps(body.get("inputs") or {})
            r.received_at = _ts(e.get("enq")) or ts
            r.expires_at = _ts(e.get("exp"))
            r.advance("queued")
            continue
        cbs = e["cbs"].split(",") if e.get("cbs") else [e["cb"]] if e.get("cb") else []
        attempts = e.get("atts", "").split(",") if e.get("atts") else []
        for i, cb in enumerate(cbs):
            r = row(cb, e)
            if kind == "rel":
                r.released_at = ts
                r.advance("released")
                if i < len(attempts):
                    r.attempts = max(r.attempts, int(attempts[i]))
            elif kind == "done":
                r.completed_at = ts
                r.last_error = e.get("note") or r.last_error
                r.advance("completed")
            elif kind == "retry":
                r.last_error = e.get("err") or r.last_error
                r.advance("queued", rank=1)
            elif kind == "reap":
                r.last_error = "lease expired: dispatcher stopped before completing"
                r.advance("queued", rank=1)
            elif kind == "fail":
                r.completed_at = ts
                r.last_error = e.get("err") or "failed"
                r.advance("failed")
            elif kind == "exp":
                r.completed_at = ts
                r.last_error = "expired in the queue before its turn"
                r.advance("expired")
    return list(rows.values())


# --- retention ------------------------------------------------------------------------------------
async def prune(pool: asyncpg.Pool, retention_days: int, batch: int = 5000) -> int:
    """Delete finished rows older than the retention (in batches, so no long lock)."""
    total = 0
    while True:
        result = await pool.execute(
            """DELETE FROM action_executions WHERE callback_id IN (
                   SELECT callback_id FROM action_executions
                   WHERE updated_at < now() - make_interval(days => $1)
                   LIMIT $2)""",
            retention_days,
            batch,
        )
        deleted = int(result.split()[-1])
        total += deleted
        if deleted < batch:
            return total


# --- recovery -------------------------------------------------------------------------------------
@dataclass
class RecoverReport:
    queued: int = 0
    already_present: int = 0
    expired: int = 0
    no_policy: list[str] = field(default_factory=list)


async def recover(queue: Any, pool: asyncpg.Pool, policies: dict[str, Policy]) -> RecoverReport:
    """Re-enqueue every received, unfinished, unexpired execution PostgreSQL knows about.

    Idempotent: an execution still queued or in flight in Redis (or finished and remembered
    for dedupe) is reported as already present, never queued twice. Executions keep their
    original arrival time, so FIFO order and expiry are as before. `policies` maps
    `portal:name` to the policy to use (from the registry or the local store).
    """

    report = RecoverReport()
    rows = await pool.fetch(
        """SELECT callback_id, portal_id, policy, workflow_id, action_definition_id,
                  object_type, object_id, input_fields, received_at
           FROM action_executions
           WHERE outcome IN ('queued', 'released') AND expires_at > now()
           ORDER BY received_at, callback_id"""
    )
    for r in rows:
        key = keys.policy_key(r["portal_id"], r["policy"])
        policy = policies.get(key)
        if policy is None:
            report.no_policy.append(r["callback_id"])
            continue
        inputs = r["input_fields"]
        item = QueueItem(
            callback_id=r["callback_id"],
            portal_id=r["portal_id"],
            action_definition_id=r["action_definition_id"] or 0,
            workflow_id=r["workflow_id"],
            object_type=r["object_type"] or "",
            object_id=r["object_id"] or "",
            received_at=r["received_at"].timestamp(),
            input_fields=json.loads(inputs) if isinstance(inputs, str) else dict(inputs or {}),
        )
        result = await queue.enqueue(item, policy, check_overflow=False)
        if result.status == "queued":
            report.queued += 1
        elif result.status == "expired":
            report.expired += 1
        else:
            report.already_present += 1
    return report


async def load_policies_for_recovery(redis: Any, pool: asyncpg.Pool) -> dict[str, Policy]:
    """Policies by `portal:name`: the registry in Redis, else the local store in PostgreSQL."""

    _, registered = await registry_load(redis)
    policies = {p.key: p for p in registered}
    for r in await pool.fetch("SELECT spec FROM policies"):
        spec = r["spec"]
        try:
            p = Policy.model_validate(json.loads(spec) if isinstance(spec, str) else spec)
        except ValueError:
            continue
        policies.setdefault(p.key, p)
    return policies


def recover_command(settings: Settings) -> None:
    import click

    async def run() -> RecoverReport:
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

    report = asyncio.run(run())
    click.echo(
        f"re-enqueued {report.queued}; already in Redis {report.already_present}; "
        f"expired {report.expired}; without a policy {len(report.no_policy)}"
    )
    for cb in report.no_policy[:20]:
        click.echo(f"  no policy for {cb}")


# --- support queries ------------------------------------------------------------------------------
async def timeline(
    pool: asyncpg.Pool, portal_id: int, callback_id: str | None = None, limit: int = 50
) -> list[dict[str, Any]]:
    """A portal's most recent executions (or one callback's), newest first, for support."""
    if callback_id is not None:
        rows = await pool.fetch(
            """SELECT * FROM action_executions WHERE portal_id = $1 AND callback_id = $2""",
            portal_id,
            callback_id,
        )
    else:
        rows = await pool.fetch(
            """SELECT * FROM action_executions WHERE portal_id = $1
               ORDER BY received_at DESC NULLS LAST LIMIT $2""",
            portal_id,
            limit,
        )
    return [dict(r) for r in rows]


def history_command(
    settings: Settings, portal_id: int, callback_id: str | None, limit: int
) -> None:
    from click import echo as click_echo
    from rich.console import Console
    from rich.table import Table

    async def run() -> list[dict[str, Any]]:
        assert settings.database_url is not None
        pool = await create_pool(settings.database_url)
        try:
            return await timeline(pool, portal_id, callback_id, limit)
        finally:
            await pool.close()

    rows = asyncio.run(run())
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
            click_echo("\t".join(line))
        return
    table = Table(*columns, "last error", title=f"portal {portal_id}")
    for line in lines:
        table.add_row(*line)
    console.print(table)
