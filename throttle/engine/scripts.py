"""Every Lua script Throttle runs: loaded once per client, called by SHA, one typed function each.

The queue's scripts and the HubSpot budget's (`hubspot_budget_*`, for `throttle.hubspot.budget`)
live in `throttle/engine/lua/`, one file per operation, and load the same way: each is sent with
`_lib.lua` prepended (shared helpers). Calls go by EVALSHA; if Redis answers NOSCRIPT (after a
restart or a SCRIPT FLUSH) the source is loaded and the call repeated, so callers never think
about loading. Every typed function takes the script's keys, then its arguments, in the order the
script's header comment lists them, and returns a `ScriptCall`; `Scripts.run` sends one,
`Scripts.run_many` sends several in one round trip (a pipeline on a single Redis; concurrent
per-node calls, bounded, on a Cluster). The webhook's enqueue skips the `ScriptCall` and goes
through `Scripts.call` with keys and arguments already in the script's order (`Queue.enqueue`),
because it runs on every request.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass
from importlib.resources import files
from typing import Any

from redis.exceptions import NoScriptError

ENGINE_SCRIPTS = (
    "enqueue",
    "take",
    "ack",
    "renew",
    "requeue",
    "fail",
    "reap",
    "apply_policy",
    "retire",
    "purge",
    "stats",
    "registry_put",
    "registry_delete",
    "hubspot_budget_take",
    "hubspot_budget_hold",
)
"""Every script, by file name; `throttle doctor` and the webhook's `/readyz` check they are
loaded."""


def lua_source(name: str) -> str:
    """A script's full source as loaded: the shared helpers, then the script."""
    lua = files("throttle.engine").joinpath("lua")
    lib = lua.joinpath("_lib.lua").read_text(encoding="utf-8")
    return lib + "\n" + lua.joinpath(f"{name}.lua").read_text(encoding="utf-8")


def _s(value: Any) -> str:
    return str(value)


ClockShift = int | str
"""What every script's `now_offset_ms` argument carries: milliseconds added to Redis' TIME
(production passes 0), or `"@<epoch µs>"`, a clock pinned where a test put it (simulations that
step time must not see the real time that passes between their steps)."""


Lease = tuple[str, str, int]
"""One lease as ack, renew, requeue and fail name it: queue ref, callback id, and the attempt
number take gave it (the holder's fencing token: a holder whose execution was taken again
since holds an older number, and its calls change nothing)."""


@dataclass(frozen=True)
class ScriptCall:
    name: str
    keys: tuple[str, ...]
    args: tuple[str, ...]


class Scripts:
    """The scripts on one Redis client: `run` / `run_many` send what the typed functions build."""

    def __init__(self, redis: Any, max_concurrency: int = 16) -> None:
        """`redis`: a redis.asyncio client, plain or cluster, or the webhook's `AutoPipeline`."""
        self.redis = redis
        self._scripts = {name: redis.register_script(lua_source(name)) for name in ENGINE_SCRIPTS}
        self._cluster = _is_cluster(redis)
        self._limit = asyncio.Semaphore(max_concurrency)

    async def load(self) -> None:
        """Load every script now (readiness checks; otherwise the first call loads it)."""
        for script in self._scripts.values():
            await self.redis.script_load(script.script)

    async def run(self, call: ScriptCall) -> Any:
        return await self.call(call.name, call.keys, call.args)

    async def call(self, name: str, keys: Sequence[str], args: Sequence[Any]) -> Any:
        """`run` without building a `ScriptCall` (the webhook's enqueue, once per request):
        arguments go to the client as they are (str, int or bytes). EVALSHA straight on the
        client rather than through the registered script object, whose own call checks the
        client's type every time; on NOSCRIPT, load the source and send it again."""
        script = self._scripts[name]
        try:
            return await self.redis.evalsha(script.sha, len(keys), *keys, *args)
        except NoScriptError:
            script.sha = await self.redis.script_load(script.script)
            return await self.redis.evalsha(script.sha, len(keys), *keys, *args)

    async def run_many(self, calls: Sequence[ScriptCall]) -> list[Any]:
        """Results in order: one pipelined round trip on a single Redis, a fan-out per call on a
        Cluster; either way at most `max_concurrency` at once, so a dispatcher settling many
        portals' completions together never exhausts its connection pool."""
        if len(calls) == 1 or self._cluster:

            async def bounded(call: ScriptCall) -> Any:
                async with self._limit:
                    return await self.run(call)

            return list(await asyncio.gather(*(bounded(c) for c in calls)))
        async with self._limit:
            pipe = self.redis.pipeline(transaction=False)
            for c in calls:
                sha = self._scripts[c.name].sha
                pipe.evalsha(sha, len(c.keys), *c.keys, *c.args)
            results = list(await pipe.execute(raise_on_error=False))
        for i, result in enumerate(results):
            if isinstance(result, NoScriptError):
                results[i] = await self.run(calls[i])  # loads the script, then calls it
            elif isinstance(result, Exception):
                raise result
        return results

    # --- one typed function per script ----------------------------------------------------------
    @staticmethod
    def take(
        due: str,
        leases: str,
        *,
        now_offset_ms: ClockShift,
        prefix: str,
        events_maxlen: int,
        lease_ms: int,
        max_items: int,
        queue_quota: int,
        max_queues: int,
        done_ms: int,
        min_hold_ms: int,
    ) -> ScriptCall:
        args = (
            now_offset_ms,
            prefix,
            events_maxlen,
            lease_ms,
            max_items,
            queue_quota,
            max_queues,
            done_ms,
            min_hold_ms,
        )
        return _call("take", (due, leases), args)

    @staticmethod
    def ack(
        leases: str,
        *,
        now_offset_ms: ClockShift,
        prefix: str,
        events_maxlen: int,
        done_ms: int,
        note: str = "",
        items: Sequence[Lease],
    ) -> ScriptCall:
        flat = [v for lease in items for v in lease]
        args = (now_offset_ms, prefix, events_maxlen, done_ms, note, *flat)
        return _call("ack", (leases,), args)

    @staticmethod
    def renew(
        leases: str,
        *,
        now_offset_ms: ClockShift,
        prefix: str,
        lease_ms: int,
        items: Sequence[Lease],
    ) -> ScriptCall:
        flat = [v for lease in items for v in lease]
        return _call("renew", (leases,), (now_offset_ms, prefix, lease_ms, *flat))

    @staticmethod
    def requeue(
        leases: str,
        due: str,
        *,
        now_offset_ms: ClockShift,
        prefix: str,
        events_maxlen: int,
        delay_ms: int,
        reason: str,
        items: Sequence[Lease],
    ) -> ScriptCall:
        flat = [v for lease in items for v in lease]
        args = (now_offset_ms, prefix, events_maxlen, delay_ms, reason, *flat)
        return _call("requeue", (leases, due), args)

    @staticmethod
    def fail(
        leases: str,
        *,
        now_offset_ms: ClockShift,
        prefix: str,
        events_maxlen: int,
        done_ms: int,
        items: Sequence[tuple[Lease, str]],
    ) -> ScriptCall:
        flat = [v for lease, reason in items for v in (*lease, reason)]
        args = (now_offset_ms, prefix, events_maxlen, done_ms, *flat)
        return _call("fail", (leases,), args)

    @staticmethod
    def reap(
        leases: str,
        due: str,
        *,
        now_offset_ms: ClockShift,
        prefix: str,
        events_maxlen: int,
        limit: int,
    ) -> ScriptCall:
        args = (now_offset_ms, prefix, events_maxlen, limit)
        return _call("reap", (leases, due), args)

    @staticmethod
    def apply_policy(
        params: str,
        queues: str,
        due: str,
        awaiting: str,
        inline: str,
        *,
        now_offset_ms: ClockShift,
        prefix: str,
        policy: str,
        revision: int,
        content_hash: str,
        entry: str,
        not_before_us: int,
        fields: dict[str, str],
    ) -> ScriptCall:
        flat = [v for item in fields.items() for v in item]
        args = (now_offset_ms, prefix, policy, revision, content_hash, entry, not_before_us, *flat)
        return _call("apply_policy", (params, queues, due, awaiting, inline), args)

    @staticmethod
    def retire(
        params: str,
        queues: str,
        due: str,
        meta: str,
        done: str,
        stats: str,
        awaiting: str,
        *,
        now_offset_ms: ClockShift,
        prefix: str,
        policy: str,
        mode: str,
    ) -> ScriptCall:
        keys = (params, queues, due, meta, done, stats, awaiting)
        return _call("retire", keys, (now_offset_ms, prefix, policy, mode))

    @staticmethod
    def purge(
        params: str,
        queues: str,
        meta: str,
        done: str,
        stats: str,
        due: str,
        leases: str,
        awaiting: str,
        *,
        prefix: str,
        policy: str,
    ) -> ScriptCall:
        keys = (params, queues, meta, done, stats, due, leases, awaiting)
        return _call("purge", keys, (prefix, policy))

    @staticmethod
    def stats(
        policy_keys: Sequence[tuple[str, str, str]],
        *,
        now_offset_ms: ClockShift,
        prefix: str,
        policies: Sequence[tuple[str, bool]],
    ) -> ScriptCall:
        """`policy_keys`: each policy's (queues, meta, stats), all of one shard; `policies`:
        each one's `portal:name` and whether its queues' daily counts are wanted."""
        flat_keys = [k for triple in policy_keys for k in triple]
        flat = [v for name, per_queue in policies for v in (name, "1" if per_queue else "0")]
        return _call("stats", flat_keys, (now_offset_ms, prefix, *flat))

    @staticmethod
    def registry_put(registry: str, rev: str, *, policy_key: str, spec: str) -> ScriptCall:
        return _call("registry_put", (registry, rev), (policy_key, spec))

    @staticmethod
    def registry_delete(registry: str, rev: str, *, policy_key: str) -> ScriptCall:
        return _call("registry_delete", (registry, rev), (policy_key,))

    @staticmethod
    def hubspot_budget_take(
        log: str,
        hold: str,
        in_flight: str,
        *,
        window_ms: int,
        limit: int,
        call_id: str,
        max_in_flight: int,
        lease_ms: int,
        poll_ms: int,
    ) -> ScriptCall:
        args = (window_ms, limit, call_id, max_in_flight, lease_ms, poll_ms)
        return _call("hubspot_budget_take", (log, hold, in_flight), args)

    @staticmethod
    def hubspot_budget_hold(hold: str, *, hold_ms: int) -> ScriptCall:
        return _call("hubspot_budget_hold", (hold,), (hold_ms,))


def _call(name: str, keys: Sequence[str], args: Sequence[Any]) -> ScriptCall:
    return ScriptCall(name, tuple(keys), tuple(_s(a) for a in args))


def _is_cluster(redis: Any) -> bool:
    from redis.asyncio.cluster import RedisCluster

    return isinstance(redis, RedisCluster)
