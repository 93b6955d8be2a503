"""The one way a component opens Redis: a plain or a Cluster client, with socket timeouts.

Without a socket timeout, a connection whose peer vanished without closing it (a Redis node
restarted behind a proxy, a dropped NAT entry) leaves a command waiting forever: a dispatcher
stops releasing, or an operator stops restoring, without an error. Every component — webhook,
dispatcher, operator, and the `status`, `recover` and `doctor` commands — opens its client
here, so all of them give up on a silent Redis within the same bound and retry in their own
loops (the webhook answers 503, which HubSpot retries).

The bounds are constants rather than settings because nothing in Throttle waits on Redis by
design: the scripts run in milliseconds and no command blocks (the history writer reads its
streams without BLOCK). A blocking read added later must block for less than
`SOCKET_TIMEOUT_S`, or pass its own timeout per call.

`require_strict_durability` sits beside the factory because it is about the same Redis: with
REDIS_DURABILITY=strict the webhook and the dispatcher check at start that every master
fsyncs each write before it answers, and refuse to start otherwise (docs/durability.md).
"""

from __future__ import annotations

from typing import Any

from redis.asyncio import Redis, RedisCluster
from redis.exceptions import RedisError, ResponseError

from throttle.settings import Settings

SOCKET_TIMEOUT_S = 5.0
"""Longest wait for any one reply: only a Redis that stopped answering takes this long."""

SOCKET_CONNECT_TIMEOUT_S = 5.0
"""Longest wait for a new connection (an unroutable address fails here, not after minutes)."""

HEALTH_CHECK_INTERVAL_S = 30.0
"""A pooled connection idle this long is PINGed before its next command, so one that died while
idle is replaced at once instead of failing that command."""

LOCAL_REDIS_URL = "redis://127.0.0.1:6379/0"
"""Where a local run without REDIS_URL looks (commands that need Redis require the setting)."""


def redis_client(settings: Settings) -> Any:
    """A redis.asyncio client for REDIS_URL: a `RedisCluster` when REDIS_CLUSTER is set."""
    url = settings.redis_url or LOCAL_REDIS_URL
    options: dict[str, Any] = {
        "socket_timeout": SOCKET_TIMEOUT_S,
        "socket_connect_timeout": SOCKET_CONNECT_TIMEOUT_S,
        "health_check_interval": HEALTH_CHECK_INTERVAL_S,
    }
    if settings.redis_cluster:
        return RedisCluster.from_url(url, **options)
    return Redis.from_url(url, **options)


STRICT_PERSISTENCE = {"appendonly": "yes", "appendfsync": "always"}
"""What REDIS_DURABILITY=strict needs of every master: each write in the append-only file and
fsync'ed before Redis answers (Redis fsyncs once per event-loop turn, so the writes of requests
pipelined together share one fsync)."""


class DurabilityError(Exception):
    """REDIS_DURABILITY=strict, and the Redis at REDIS_URL is not shown to keep every write on
    disk before it answers. The message names the setting and what Redis said; no secret."""


async def persistence(redis: Any) -> dict[str, dict[str, str]]:
    """`appendonly` and `appendfsync` of every node that takes writes (each master of a
    Cluster: a key's queue lives on one of them), by node. Raises what CONFIG GET raises."""
    if isinstance(redis, RedisCluster):
        await redis.initialize()
        return {
            node.name: _strings(await redis.config_get("append*", target_nodes=node))
            for node in redis.get_primaries()
        }
    return {"REDIS_URL": _strings(await redis.config_get("append*"))}


def _strings(reply: dict[Any, Any]) -> dict[str, str]:
    def text(value: Any) -> str:
        return value.decode() if isinstance(value, bytes) else str(value)

    return {text(k): text(v) for k, v in reply.items()}


async def require_strict_durability(redis: Any) -> dict[str, dict[str, str]]:
    """Check, at start, that every master fsyncs each write before answering; raise
    DurabilityError naming what is wrong — or that it cannot be checked — otherwise."""
    try:
        nodes = await persistence(redis)
    except ResponseError as exc:
        raise DurabilityError(
            "REDIS_DURABILITY=strict needs to read Redis' persistence settings, but CONFIG GET "
            f"was refused ({str(exc).splitlines()[0][:120]}): CONFIG is renamed, disabled or "
            "not allowed for this user, as on many managed Redis services. Allow CONFIG GET "
            "for Throttle's Redis user, or set REDIS_DURABILITY=standard (docs/durability.md)"
        ) from None
    except (RedisError, OSError) as exc:
        raise DurabilityError(
            "REDIS_DURABILITY=strict needs to read Redis' persistence settings, but Redis at "
            f"REDIS_URL is unreachable ({type(exc).__name__})"
        ) from None
    wrong = [
        f"{node} has appendonly {config.get('appendonly', '?')}, "
        f"appendfsync {config.get('appendfsync', '?')}"
        for node, config in nodes.items()
        if any(config.get(name) != value for name, value in STRICT_PERSISTENCE.items())
    ]
    if wrong:
        raise DurabilityError(
            "REDIS_DURABILITY=strict answers BLOCK only once the write is on disk, which needs "
            "Redis with appendonly yes and appendfsync always, but "
            + "; ".join(wrong)
            + " (set both in redis.conf or with CONFIG SET, or set REDIS_DURABILITY=standard)"
        )
    return nodes
