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
"""

from __future__ import annotations

from typing import Any

from redis.asyncio import Redis, RedisCluster

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
