"""Write back, within seconds, the rate parameters Redis lost (a restart without data, a flush).

The operator is the only writer of policy parameters, so nobody else would: the watch compares
what the operator owns with Redis every OPERATOR_CHECK_INTERVAL (one pipelined round trip for
all policies) and reconciles what is missing, and posts a ParametersRestored Event on each
restored resource (from the reference the handlers keep in `OperatorState.refs`).
"""

from __future__ import annotations

import logging

from throttle import tasks
from throttle.operator import k8s_events
from throttle.operator.handler_state import OperatorState

log = logging.getLogger(__name__)


async def watch_redis(state: OperatorState) -> None:
    """Until cancelled; neither a Redis error nor a bug ends it for the operator's lifetime."""
    await tasks.periodically(
        "redis watch", state.settings.operator_check_interval, lambda: _restore(state), log
    )


async def _restore(state: OperatorState) -> None:
    for owned in await state.policies.restore_missing():
        state.metrics.operator_restores.inc()
        ref = state.refs.get(owned.owner)
        if ref is not None and state.posting is not None:
            state.posting.run(k8s_events.restored, ref, owned.policy.key)
