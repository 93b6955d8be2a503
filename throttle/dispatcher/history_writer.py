"""Copy the engine's history events from Redis streams into PostgreSQL, in batches.

Every dispatcher pod runs one writer; all writers share one consumer group per shard stream,
so each event is written once. An event is acknowledged (and deleted from the stream) only after
the PostgreSQL transaction holding it committed. While PostgreSQL is down the writer keeps its
batch and retries with backoff, and the streams buffer new events (up to
HISTORY_BUFFER_EVENTS per shard; beyond that the scripts drop and count them) — releases never
wait for history. A writer that dies leaves its unacknowledged events pending; another writer
claims them after `claim_idle_seconds`.

Once an hour one writer (an advisory lock) prunes: history past HISTORY_RETENTION_DAYS, and the
disabled tokens of portals uninstalled more than UNINSTALL_GRACE_DAYS ago, and purges those
portals' data (history/portal_purge.py: queued state in Redis, history, recorded once).
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import asyncpg
from redis.exceptions import RedisError

from throttle import tasks
from throttle.engine import keys
from throttle.engine.queue import Queue
from throttle.history.folding import fold_events
from throttle.history.portal_purge import portals_due_for_purge, purge_portal
from throttle.history.pruning import prune
from throttle.history.upsert import write_rows
from throttle.hubspot.tokens import delete_portal_tokens, purge_disabled_tokens
from throttle.metrics import Metrics

log = logging.getLogger(__name__)

PRUNE_LOCK = 0x74687270  # one pod prunes at a time
_DB_ERRORS = (OSError, asyncio.TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError)


def _name(exc: BaseException) -> str:
    return type(exc).__name__


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


@dataclass
class _Batch:
    events: list[dict[str, str]] = field(default_factory=list)
    ids: dict[int, list[str]] = field(default_factory=dict)

    def __len__(self) -> int:
        return sum(len(ids) for ids in self.ids.values())


@dataclass
class HistoryWriter:
    redis: Any
    pool_factory: Callable[[], Awaitable[asyncpg.Pool]]
    metrics: Metrics
    consumer: str = field(default_factory=lambda: f"{socket.gethostname()}-{os.getpid()}")
    shards: Sequence[int] = tuple(range(keys.SHARDS))
    batch_size: int = 1000
    idle_sleep: float = 0.2
    claim_idle_seconds: float = 60.0
    retention_days: int = 30
    uninstall_grace_days: float = 7.0
    prune_every_seconds: float = 3600.0
    _pool: asyncpg.Pool | None = None
    _held: _Batch | None = None
    _failures: int = 0

    async def ensure_groups(self) -> None:
        for shard in self.shards:
            try:
                await self.redis.xgroup_create(
                    keys.events(shard), keys.HISTORY_GROUP, id="0", mkstream=True
                )
            except Exception as exc:  # BUSYGROUP: another writer made it first
                if "BUSYGROUP" not in str(exc):
                    raise

    async def run(self, stop: asyncio.Event) -> None:
        await self.ensure_groups()
        loop = asyncio.get_running_loop()
        next_claim = next_prune = loop.time()
        while not stop.is_set():
            try:
                if loop.time() >= next_claim:
                    await self.claim_abandoned()
                    await self.collect_dropped()
                    next_claim = loop.time() + min(10.0, self.claim_idle_seconds / 2)
                if loop.time() >= next_prune and self._held is None:
                    next_prune = loop.time() + self.prune_every_seconds
                    await self.prune_once()
                written = await self.step()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # Redis hiccup: try again shortly
                log.warning("history writer: %s", type(exc).__name__)
                written = 0
            if written == 0:
                delay = self.idle_sleep if self._held is None else self._backoff()
                await tasks.wait(stop, delay)
        await self.flush()

    async def flush(self) -> None:
        """On shutdown: one last try to commit what is held (else it stays pending in Redis)."""
        if self._held is not None:
            await self._commit(self._held)

    def _backoff(self) -> float:
        return float(min(5.0, 0.25 * 2 ** min(self._failures, 5)))

    async def step(self) -> int:
        """Commit the held batch, or read and commit a new one; events written (0 = none)."""
        if self._held is None:
            batch = await self._read(">")
            if not batch:
                return 0
            self._held = batch
        held = self._held
        if not await self._commit(held):
            return 0
        return len(held)

    async def _commit(self, batch: _Batch) -> bool:
        self.metrics.history_backlog.set(len(batch))
        rows = fold_events(batch.events)
        try:
            pool = await self._get_pool()
            async with pool.acquire() as conn, conn.transaction():
                await write_rows(conn, rows)
        except _DB_ERRORS as exc:
            self._failures += 1
            self.metrics.history_errors.inc()
            if self._failures in (1, 10) or self._failures % 100 == 0:
                log.warning(
                    "history: PostgreSQL write failed (%s); holding %d events, retrying",
                    type(exc).__name__,
                    len(batch),
                )
            return False
        self._failures = 0
        await self._ack(batch)
        self._held = None
        self.metrics.history_written.inc(len(batch))
        self.metrics.history_backlog.set(0)
        return True

    async def _get_pool(self) -> asyncpg.Pool:
        if self._pool is None:
            self._pool = await self.pool_factory()
        return self._pool

    async def _read(self, start: str) -> _Batch:
        batch = _Batch()
        if _is_cluster(self.redis):
            replies = await asyncio.gather(
                *(
                    self.redis.xreadgroup(
                        keys.HISTORY_GROUP,
                        self.consumer,
                        {keys.events(s): start},
                        count=max(1, self.batch_size // 4),
                    )
                    for s in self.shards
                )
            )
            entries = [stream for reply in replies for stream in (reply or [])]
        else:
            entries = await self.redis.xreadgroup(
                keys.HISTORY_GROUP,
                self.consumer,
                {keys.events(s): start for s in self.shards},
                count=max(1, self.batch_size // 4),
            )
        for stream, messages in entries or []:
            shard = _shard_of_stream(_text(stream))
            for message_id, fields in messages:
                batch.ids.setdefault(shard, []).append(_text(message_id))
                if fields:  # empty: deleted while pending; acknowledged with the rest
                    batch.events.append({_text(k): _text(v) for k, v in fields.items()})
        return batch

    async def _ack(self, batch: _Batch) -> None:
        for shard, ids in batch.ids.items():
            stream = keys.events(shard)
            await self.redis.xack(stream, keys.HISTORY_GROUP, *ids)
            await self.redis.xdel(stream, *ids)

    async def claim_abandoned(self) -> int:
        """Take over events a dead writer read but never committed."""
        claimed = 0
        idle_ms = int(self.claim_idle_seconds * 1000)
        for shard in self.shards:
            stream = keys.events(shard)
            reply = await self.redis.xautoclaim(
                stream, keys.HISTORY_GROUP, self.consumer, idle_ms, "0-0", count=self.batch_size
            )
            claimed += len(reply[1]) if reply and len(reply) > 1 else 0
        if claimed:
            # they are now pending for this consumer: read them back and commit
            while self._held is None:
                batch = await self._read("0")
                if not batch:
                    break
                self._held = batch
                if not await self._commit(batch):
                    break
        return claimed

    async def collect_dropped(self) -> int:
        """Move the scripts' dropped-event counters into this process' metric (each once)."""
        total = 0
        for shard in self.shards:
            value = await self.redis.getdel(keys.events_dropped(shard))
            if value:
                total += int(value)
        if total:
            self.metrics.history_dropped.inc(total)
            log.warning("history: %d events were dropped because the Redis buffer was full", total)
        return total

    async def prune_once(self) -> int:
        """Delete rows past the retention, and the disabled tokens past the uninstall grace
        period, if no other pod is doing it right now; returns the executions deleted."""
        try:
            pool = await self._get_pool()
            async with pool.acquire() as conn:
                if not await conn.fetchval("SELECT pg_try_advisory_lock($1)", PRUNE_LOCK):
                    return 0
                try:
                    deleted = await prune(pool, self.retention_days)
                    purged = await purge_disabled_tokens(pool, self.uninstall_grace_days)
                    try:
                        await self.purge_uninstalled(pool)
                    except (*_DB_ERRORS, RedisError) as exc:  # the next round tries again
                        log.warning("purge of uninstalled portals failed (%s)", _name(exc))
                finally:
                    await conn.execute("SELECT pg_advisory_unlock($1)", PRUNE_LOCK)
        except _DB_ERRORS:
            return 0
        if deleted:
            log.info(
                "history: pruned %d executions older than %d days", deleted, self.retention_days
            )
        if purged:
            log.info(
                "deleted the tokens of %d portals uninstalled more than %g days ago",
                purged,
                self.uninstall_grace_days,
            )
        return deleted

    async def purge_uninstalled(self, pool: asyncpg.Pool) -> int:
        """Purge the data of portals uninstalled longer than the grace period (each once:
        the purge is recorded); returns how many."""
        due = await portals_due_for_purge(pool, self.uninstall_grace_days)
        for portal_id in due:
            await purge_portal(
                pool, Queue(self.redis), portal_id, "uninstalled", delete_portal_tokens
            )
        return len(due)

    async def close(self) -> None:
        if self._pool is not None:
            await self._pool.close()
            self._pool = None


def _is_cluster(redis: Any) -> bool:
    from redis.asyncio.cluster import RedisCluster

    return isinstance(redis, RedisCluster)


def _shard_of_stream(name: str) -> int:
    # throttle:{tN}:events
    return int(name.split("{t", 1)[1].split("}", 1)[0])
