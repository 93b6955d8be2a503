"""The inline queues Redis holds (read-only): every entry for the tools, notes for the outputs.

`registry.ensure_inline` writes each inline queue's entry (`keys.inline_queues`, one hash per
shard) with its parameters. `throttle status`, the metrics and the operator's status list them
with `inline_load`; the dispatcher's completions carry each queue's note in their output fields
through `InlineNotes`, which reads an entry once and keeps it for `ttl` seconds (a note changes
only when a builder edits the fields or the platform team the ceiling).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterable
from typing import Any

from pydantic import ValidationError

from throttle import bounded_cache
from throttle.engine import keys
from throttle.engine.policy import Policy
from throttle.engine.policy_index import decode_entries

log = logging.getLogger(__name__)


def _entry(raw: bytes | str | None) -> tuple[Policy, str] | None:
    if raw is None:
        return None
    try:
        data = json.loads(raw)
        return Policy.model_validate(data["spec"]), str(data.get("note", ""))
    except (ValueError, KeyError, TypeError, ValidationError):
        log.warning("an inline queue's entry does not validate; skipped")
        return None


async def inline_load(
    redis: Any,
    portal_id: int | None = None,
    known: dict[Any, tuple[Policy, str]] | None = None,
) -> list[tuple[Policy, str]]:
    """Every inline queue's policy and note ("" = none), from every shard, in one round trip.

    `portal_id` and `known` as in `policy_index.registry_load`: one portal's, picked by key
    before decoding; entries already decoded, by their raw JSON."""
    async with redis.pipeline(transaction=False) as pipe:
        for shard in range(keys.SHARDS):
            pipe.hgetall(keys.inline_queues(shard))
        found = await pipe.execute()
    out = [e for entries in found for e in decode_entries(entries, _named, portal_id, known)]
    return sorted(out, key=lambda pair: pair[0].key)


def _named(_name: Any, raw: bytes | str | None) -> tuple[Policy, str] | None:
    return _entry(raw)


class InlineNotes:
    """Each inline queue's note, read from Redis at most once per `ttl` per queue."""

    MAX_ENTRIES = 10_000

    def __init__(self, redis: Any, ttl: float = 30.0) -> None:
        self.redis = redis
        self.ttl = ttl
        self._notes: dict[str, tuple[str, float]] = {}

    async def load(self, policy_keys: Iterable[str]) -> None:
        """Read the notes of these queues that are not in memory (or too old)."""
        now = time.monotonic()
        wanted = sorted(
            {k for k in policy_keys if now - self._notes.get(k, ("", -self.ttl))[1] >= self.ttl}
        )
        if not wanted:
            return
        async with self.redis.pipeline(transaction=False) as pipe:
            for pkey in wanted:
                pipe.hget(keys.inline_queues(keys.shard_of(pkey)), pkey)
            found = await pipe.execute()
        for pkey, raw in zip(wanted, found, strict=True):
            entry = _entry(raw)
            bounded_cache.put(self._notes, pkey, (entry[1] if entry else "", now), self.MAX_ENTRIES)

    def note(self, policy_key: str) -> str:
        return self._notes.get(policy_key, ("", 0.0))[0]
