"""The engine's Lua scripts: loaded once per client, called by SHA, one typed function each.

Each script in `throttle/lua/` is sent with `_lib.lua` prepended (shared helpers). redis-py's
Script objects call EVALSHA and re-send the source if Redis answers NOSCRIPT (after a restart or
a SCRIPT FLUSH), so callers never think about loading. Every function takes the script's keys,
then its arguments, in the order the script's header comment lists them.
"""

from __future__ import annotations

from collections.abc import Sequence
from importlib.resources import files
from typing import Any

ENGINE_SCRIPTS = (
    "enqueue",
    "take",
    "ack",
    "requeue",
    "fail",
    "reap",
    "apply_policy",
    "retire",
    "stats",
)


def lua_source(name: str) -> str:
    """A script's full source as loaded: the shared helpers, then the script."""
    lua = files("throttle").joinpath("lua")
    lib = lua.joinpath("_lib.lua").read_text(encoding="utf-8")
    return lib + "\n" + lua.joinpath(f"{name}.lua").read_text(encoding="utf-8")


def _s(value: Any) -> str:
    return str(value)


class Scripts:
    """The engine's scripts registered on one redis client (plain or cluster)."""

    def __init__(self, redis: Any) -> None:
        self.redis = redis
        self._scripts = {name: redis.register_script(lua_source(name)) for name in ENGINE_SCRIPTS}

    async def load(self) -> None:
        """Load every script now (readiness checks; otherwise the first call loads it)."""
        for script in self._scripts.values():
            await self.redis.script_load(script.script)

    async def _call(self, name: str, keys: Sequence[str], args: Sequence[Any]) -> Any:
        return await self._scripts[name](keys=list(keys), args=[_s(a) for a in args])

    async def enqueue(
        self,
        due: str,
        params: str,
        meta: str,
        done: str,
        queues: str,
        queue_list: str,
        queue_state: str,
        stats: str,
        *,
        now_offset_ms: int,
        prefix: str,
        ref: str,
        qid: str,
        callback_id: str,
        expiration_ms: int,
        revision: int,
        max_depth: int,
        events_maxlen: int,
        enqueued_us: int,
        event: str,
    ) -> list[Any]:
        keys = (due, params, meta, done, queues, queue_list, queue_state, stats)
        args = (now_offset_ms, prefix, ref, qid, callback_id, expiration_ms, revision, max_depth)
        return list(await self._call("enqueue", keys, (*args, events_maxlen, enqueued_us, event)))

    async def take(
        self,
        due: str,
        leases: str,
        *,
        now_offset_ms: int,
        prefix: str,
        events_maxlen: int,
        lease_ms: int,
        max_items: int,
        queue_quota: int,
        max_queues: int,
        done_ms: int,
    ) -> list[Any]:
        args = (
            now_offset_ms,
            prefix,
            events_maxlen,
            lease_ms,
            max_items,
            queue_quota,
            max_queues,
            done_ms,
        )
        return list(await self._call("take", (due, leases), args))

    async def ack(
        self,
        leases: str,
        *,
        now_offset_ms: int,
        prefix: str,
        events_maxlen: int,
        done_ms: int,
        items: Sequence[tuple[str, str]],
    ) -> int:
        flat = [v for pair in items for v in pair]
        args = (now_offset_ms, prefix, events_maxlen, done_ms, *flat)
        return int(await self._call("ack", (leases,), args))

    async def requeue(
        self,
        leases: str,
        due: str,
        *,
        now_offset_ms: int,
        prefix: str,
        events_maxlen: int,
        delay_ms: int,
        reason: str,
        items: Sequence[tuple[str, str]],
    ) -> int:
        flat = [v for pair in items for v in pair]
        args = (now_offset_ms, prefix, events_maxlen, delay_ms, reason, *flat)
        return int(await self._call("requeue", (leases, due), args))

    async def fail(
        self,
        leases: str,
        *,
        now_offset_ms: int,
        prefix: str,
        events_maxlen: int,
        done_ms: int,
        items: Sequence[tuple[str, str, str]],
    ) -> int:
        flat = [v for triple in items for v in triple]
        args = (now_offset_ms, prefix, events_maxlen, done_ms, *flat)
        return int(await self._call("fail", (leases,), args))

    async def reap(
        self,
        leases: str,
        due: str,
        *,
        now_offset_ms: int,
        prefix: str,
        events_maxlen: int,
        limit: int,
    ) -> int:
        args = (now_offset_ms, prefix, events_maxlen, limit)
        return int(await self._call("reap", (leases, due), args))

    async def apply_policy(
        self,
        params: str,
        queues: str,
        due: str,
        *,
        now_offset_ms: int,
        prefix: str,
        policy: str,
        revision: int,
        content_hash: str,
        fields: dict[str, str],
    ) -> int:
        flat = [v for item in fields.items() for v in item]
        args = (now_offset_ms, prefix, policy, revision, content_hash, *flat)
        return int(await self._call("apply_policy", (params, queues, due), args))

    async def retire(
        self,
        params: str,
        queues: str,
        due: str,
        meta: str,
        done: str,
        stats: str,
        *,
        now_offset_ms: int,
        prefix: str,
        policy: str,
        mode: str,
    ) -> int:
        keys = (params, queues, due, meta, done, stats)
        return int(await self._call("retire", keys, (now_offset_ms, prefix, policy, mode)))

    async def stats(
        self,
        queues: str,
        meta: str,
        stats: str,
        *,
        now_offset_ms: int,
        prefix: str,
        policy: str,
    ) -> list[Any]:
        args = (now_offset_ms, prefix, policy)
        return list(await self._call("stats", (queues, meta, stats), args))
