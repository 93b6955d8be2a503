"""Kubernetes Events the operator posts on a ThrottlePolicy (`kubectl describe tp NAME`).

One function per kind of happening, so reasons stay few and stable (people alert on them):
Warnings for what needs a human (InvalidSpec, Conflict, RedisUnavailable, ParametersRestored),
Normal events for state changes (Applied, Paused, Resumed, Retiring, Retired). Routine work
(a status refresh, a resume that found everything in place) posts nothing.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import kopf

from throttle.engine.manifests import FieldErrors, OnDelete
from throttle.engine.policy import Policy
from throttle.operator.status_patch import rate_text

Body = Mapping[str, Any]


def _post(body: Body, type_: str, reason: str, message: str) -> None:
    kopf.event(body, type=type_, reason=reason, message=message[:1000])  # type: ignore[arg-type]


def describe_errors(errors: FieldErrors) -> str:
    return "; ".join(f"{path}: {message}" for path, message in errors)


def invalid_spec(body: Body, errors: FieldErrors, generation: int, in_force: int | None) -> None:
    kept = (
        f"generation {in_force} stays in force"
        if in_force
        else "nothing is applied until it is fixed"
    )
    _post(
        body,
        "Warning",
        "InvalidSpec",
        f"generation {generation} not applied ({kept}): {describe_errors(errors)}",
    )


def conflict(body: Body, key: str, owner: str) -> None:
    _post(
        body,
        "Warning",
        "Conflict",
        f"policy {key} is already defined by {owner}; this resource is not applied "
        "(set spec.name to a different name)",
    )


def redis_unavailable(body: Body, error: BaseException) -> None:
    _post(
        body,
        "Warning",
        "RedisUnavailable",
        f"cannot reach Redis ({type(error).__name__}); retrying",
    )


def applied(body: Body, policy: Policy, generation: int) -> None:
    spec = policy.spec()
    details = [f"rate {rate_text(spec)}"]
    if policy.daily_cap:
        details.append(f"daily cap {policy.daily_cap.limit} ({policy.daily_cap.time_zone})")
    if policy.schedule:
        details.append(f"{len(policy.schedule.windows)} window(s) in {policy.schedule.time_zone}")
    if policy.paused:
        details.append("paused")
    _post(
        body,
        "Normal",
        "Applied",
        f"generation {generation} in force as policy {policy.key}: {', '.join(details)}",
    )


def paused(body: Body, now_paused: bool) -> None:
    if now_paused:
        _post(body, "Normal", "Paused", "releases paused; executions keep queueing")
    else:
        _post(body, "Normal", "Resumed", "releases resumed at the policy's rate")


def restored(body: Body, key: str) -> None:
    _post(
        body,
        "Warning",
        "ParametersRestored",
        f"Redis had lost the parameters of policy {key} (restart without data?); "
        "written back from this resource",
    )


def retiring(body: Body, mode: OnDelete, remaining: int) -> None:
    what = {
        "Drain": "releasing them at the policy's rate until the queue is empty",
        "Succeed": "completing them now with SUCCESS",
        "Fail": "completing them now with FAIL_CONTINUE",
    }[mode]
    _post(
        body,
        "Normal",
        "Retiring",
        f"deleted with {remaining} execution(s) queued or in flight: {what}",
    )


def retired(body: Body, key: str) -> None:
    _post(body, "Normal", "Retired", f"policy {key} removed from the engine; nothing was stranded")
