"""Write back, within seconds, the rate parameters Redis lost (a restart without data, a flush).

The operator is the only writer of policy parameters, so nobody else would: the watch compares
what the operator owns with Redis every OPERATOR_CHECK_INTERVAL (one pipelined round trip for
all policies) and reconciles what is missing. The Event for each restored policy is posted by
its status timer (`handlers.refresh_status`), which has the resource's body.
"""

from __future__ import annotations

import asyncio
import logging

from redis.exceptions import RedisError

from throttle.operator.handler_state import OperatorState

log = logging.getLogger(__name__)


async def watch_redis(state: OperatorState) -> None:
    """Until cancelled; neither a Redis error nor a bug ends it for the operator's lifetime."""
    interval = state.settings.operator_check_interval
    while True:
        await asyncio.sleep(interval)
        try:
            restored = await state.policies.restore_missing()
        except (RedisError, OSError) as exc:
            log.warning("redis watch: %s", exc)
            continue
        except Exception:
            log.exception("redis watch failed; continuing")
            continue
        for owned in restored:
            state.restored.add(owned.owner)
            state.metrics.operator_restores.inc()
