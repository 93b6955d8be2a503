"""kopf handlers for ThrottlePolicy: one small function per concern, registered per operator.

- `apply_spec` (create / update / resume): the spec → the engine's one `reconcile`, idempotent,
  so a restart's resume finds everything in place and does nothing visible;
- `retire_policy` (delete, holds the finalizer): hands queued executions over as `onDelete` says
  and lets the resource go only when nothing of the policy is left in Redis;
- queue figures are kept current by one loop over all policies (`status_sweep.py`), not a timer
  per resource; it patches only what changed, so idle policies cost no API writes, and the
  Redis watch (`redis_watch.py`) writes back and reports parameters Redis lost.

Handlers go into a registry built per operator (`build_registry`), never kopf's global one, so
tests can run several operators, each as its own ServiceAccount, in one process. Shared clients
live in `memo.state` (an `OperatorState`), opened by `startup` and closed by `cleanup`.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import kopf
from redis.exceptions import RedisError

from throttle.engine.layout import ensure_layout
from throttle.engine.manifests import (
    GROUP,
    PLURAL,
    VERSION,
    ManifestError,
    on_delete_mode,
    policy_from_resource,
)
from throttle.engine.policy import Policy
from throttle.engine.queue import Queue
from throttle.engine.redis_client import redis_client
from throttle.kube import api_client, connection_info
from throttle.operator import k8s_events
from throttle.operator.handler_state import OperatorState
from throttle.operator.owned_policies import (
    AlreadyClaimed,
    OwnedPolicies,
    tombstone,
)
from throttle.operator.redis_watch import watch_redis
from throttle.operator.status_patch import (
    FIGURE_KEYS,
    Outcome,
    QueueFigures,
    desired_status,
    status_patch,
)
from throttle.operator.status_sweep import sweep_statuses
from throttle.settings import Settings

log = logging.getLogger(__name__)

RESOURCE = (GROUP, VERSION, PLURAL)
FINALIZER = "throttle.dev/finalizer"
ANNOTATION_PREFIX = "throttle.dev"


def _owner(namespace: str | None, name: str | None) -> str:
    return f"{namespace}/{name}"


def _created(meta: Mapping[str, Any]) -> str:
    return str(meta.get("creationTimestamp") or "")


# ---- startup / cleanup / login ------------------------------------------------------------------


async def startup(memo: Any, **_: Any) -> None:
    """Open Redis and the engine's queue; start the Redis watch."""
    state = OperatorState.of(memo)
    state.redis = redis_client(state.settings)
    await ensure_layout(state.redis)  # before the first write (kopf retries a failed start)
    state.owned = OwnedPolicies(Queue(state.redis))
    state.kube = api_client(state.kube_configuration)
    state.watcher = asyncio.create_task(watch_redis(state), name="throttle redis watch")
    state.sweeper = asyncio.create_task(sweep_statuses(state), name="throttle status sweep")
    state.metrics.operator_leader.set(1)


async def cleanup(memo: Any, **_: Any) -> None:
    state = OperatorState.of(memo)
    state.metrics.operator_leader.set(0)
    for task in (state.watcher, state.sweeper):
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
    if state.kube is not None:
        state.kube.close()
    if state.redis is not None:
        await state.redis.aclose()


def login(memo: Any, **_: Any) -> kopf.ConnectionInfo:
    """The operator's own credentials (never the kubernetes library's global default)."""
    return connection_info(OperatorState.of(memo).kube_configuration)


# ---- the spec -----------------------------------------------------------------------------------


@dataclass
class _StatusWriter:
    """Puts the status a resource should show into kopf's patch, only where it differs."""

    patch: kopf.Patch
    status: Mapping[str, Any] | None
    spec: Mapping[str, Any]
    generation: int
    state: OperatorState
    owner: str

    def show(
        self,
        outcome: Outcome,
        message: str,
        policy: Policy | None = None,
        figures: QueueFigures | None = None,
    ) -> None:
        desired = desired_status(
            spec=self.spec,
            generation=self.generation,
            outcome=outcome,
            message=message,
            policy_name=policy.key if policy else None,
            figures=figures,
            current=self.status,
        )
        diff = status_patch(self.status, desired)
        if diff:
            self.patch.status.update(diff)
            self.state.metrics.operator_status_patches.inc()
        shows = {**(self.status or {}), **diff}
        self.state.shown[self.owner] = {k: shows[k] for k in FIGURE_KEYS if k in shows}


def _ready(policy: Policy) -> tuple[Outcome, str]:
    if policy.paused:
        return Outcome.PAUSED, "applied; paused: nothing is released"
    return Outcome.APPLIED, "applied: executions are released at the policy's rate"


async def apply_spec(
    *,
    body: kopf.Body,
    spec: kopf.Spec,
    meta: kopf.Meta,
    status: kopf.Status,
    name: str,
    namespace: str | None,
    patch: kopf.Patch,
    memo: Any,
    **_: Any,
) -> None:
    """Reconcile the spec into the engine (idempotent; a no-op when Redis already matches)."""
    state, owner = OperatorState.of(memo), _owner(namespace, name)
    writer = _StatusWriter(patch, status, spec, int(meta.get("generation") or 0), state, owner)
    state.refs[owner] = _reference(body)
    if state.posting is None:
        state.posting = contextvars.copy_context()
    async with state.lock(owner):
        await _reconcile(writer, body, meta, owner)


def _reference(body: kopf.Body) -> dict[str, Any]:
    """What an Event needs of the resource (kept per resource instead of its whole body)."""
    meta = body.get("metadata", {})
    return {
        "apiVersion": body.get("apiVersion"),
        "kind": body.get("kind"),
        "metadata": {k: meta.get(k) for k in ("name", "namespace", "uid")},
    }


async def _reconcile(writer: _StatusWriter, body: kopf.Body, meta: kopf.Meta, owner: str) -> None:
    state, generation = writer.state, writer.generation
    owned = state.policies
    previous_key = owned.key_of(owner)
    previous = owned.entries[previous_key].policy if previous_key else None
    try:
        policy = policy_from_resource(body)
    except ManifestError as exc:
        state.metrics.operator_reconciles.labels("invalid").inc()
        k8s_events.invalid_spec(body, exc.errors, generation, state.applied_generations.get(owner))
        writer.show(Outcome.INVALID_SPEC, k8s_events.describe_errors(exc.errors))
        return  # permanent until the spec changes: the next edit calls this handler again
    try:
        applied = await owned.apply(owner, _created(meta), policy, generation)
    except AlreadyClaimed as exc:
        state.metrics.operator_reconciles.labels("conflict").inc()
        if _ready_reason(writer.status) != Outcome.CONFLICT.value:
            k8s_events.conflict(body, exc.key, exc.owner)
        writer.show(Outcome.CONFLICT, str(exc), policy)
        # kopf calls again after the delay (the other source may go away); the status above
        # goes out with each try, changed only the first time.
        raise kopf.TemporaryError(str(exc), delay=state.settings.operator_status_interval) from exc
    except (RedisError, OSError) as exc:
        state.metrics.operator_reconciles.labels("error").inc()
        if _ready_reason(writer.status) != Outcome.REDIS_UNAVAILABLE.value:
            k8s_events.redis_unavailable(body, exc)
        writer.show(Outcome.REDIS_UNAVAILABLE, f"cannot reach Redis: {exc}", policy)
        raise kopf.TemporaryError(f"Redis unavailable: {exc}", delay=2) from exc
    state.metrics.operator_reconciles.labels("written" if applied.written else "unchanged").inc()
    if applied.written:
        k8s_events.applied(body, policy, generation)
    if previous is not None and previous.paused != policy.paused:
        k8s_events.paused(body, policy.paused)
    state.applied_generations[owner] = generation
    outcome, message = _ready(policy)
    try:
        figures: QueueFigures | None = await owned.figures(policy)
    except (RedisError, OSError):
        figures = None
    writer.show(outcome, message, policy, figures)


def _ready_reason(status: Mapping[str, Any] | None) -> str | None:
    for c in (status or {}).get("conditions") or []:
        if c.get("type") == "Ready":
            return str(c.get("reason"))
    return None


# ---- deletion -----------------------------------------------------------------------------------


async def retire_policy(
    *,
    body: kopf.Body,
    spec: kopf.Spec,
    meta: kopf.Meta,
    status: kopf.Status,
    name: str,
    namespace: str | None,
    patch: kopf.Patch,
    memo: Any,
    retry: int,
    **_: Any,
) -> None:
    """Hand queued executions over as `spec.onDelete` says; hold the finalizer until done."""
    state = OperatorState.of(memo)
    owner = _owner(namespace, name)
    owned = state.policies
    key = owned.key_of(owner)
    policy: Policy | None = owned.entries[key].policy if key else None
    if policy is None:
        try:
            policy = policy_from_resource(body)
        except ManifestError:
            # The spec is invalid now; the status names the policy last in force, if any.
            shown = status.get("policy") if status else None
            if not shown:
                return  # never applied: nothing of it is in Redis
            policy = tombstone(str(shown))
        if owned.owner_of(policy.key) not in (None, owner):
            return  # the policy belongs to another resource: deleting this one changes nothing
    mode = on_delete_mode(spec)
    try:
        remaining = await owned.retire(policy, mode)
    except (RedisError, OSError) as exc:
        raise kopf.TemporaryError(f"Redis unavailable: {exc}", delay=2) from exc
    if remaining:
        if retry == 0:
            k8s_events.retiring(body, mode, remaining)
        generation = int(meta.get("generation") or 0)
        message = f"deleted; {remaining} execution(s) still queued or in flight ({mode})"
        try:
            figures: QueueFigures | None = await owned.figures(policy)
        except (RedisError, OSError):
            figures = None
        writer = _StatusWriter(patch, status, spec, generation, state, owner)
        writer.show(Outcome.DRAINING, message, policy, figures)
        raise kopf.TemporaryError(message, delay=state.settings.operator_retire_poll_interval)
    owned.forget(owner)
    state.forget(owner)
    k8s_events.retired(body, policy.key)


# ---- registration -------------------------------------------------------------------------------


def build_registry(settings: Settings) -> kopf.OperatorRegistry:
    """A fresh registry with every handler of the operator."""
    registry = kopf.OperatorRegistry()
    kopf.on.startup(registry=registry)(startup)
    kopf.on.cleanup(registry=registry)(cleanup)
    kopf.on.login(registry=registry)(login)
    for on in (kopf.on.create, kopf.on.update, kopf.on.resume):
        on(*RESOURCE, registry=registry, backoff=2)(apply_spec)
    kopf.on.delete(*RESOURCE, registry=registry, optional=False, backoff=2)(retire_policy)
    return registry


def operator_settings(settings: Settings) -> kopf.OperatorSettings:
    """kopf's settings: our finalizer and annotations, no peering (the Lease decides)."""
    config = kopf.OperatorSettings()
    config.persistence.finalizer = FINALIZER
    config.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=ANNOTATION_PREFIX)
    config.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=ANNOTATION_PREFIX, key="last-handled-configuration"
    )
    config.peering.standalone = True
    # Only our own Events (k8s_events.py): kopf would echo every retry of a draining policy's
    # finalizer as a new Event object; the log keeps those.
    config.posting.level = logging.CRITICAL
    config.watching.server_timeout = 300
    config.watching.client_timeout = 330
    config.networking.request_timeout = 30
    config.queueing.error_delays = (1, 2, 5, 10)
    # At most _WORKERS resources handled at once, not one worker per resource: 10,000 resources
    # applied together otherwise mean 10,000 concurrent handlers, each opening its own TLS
    # connection to the API server (kopf's pool is unbounded), which costs more CPU and memory
    # than the work itself; events wait in their resource's queue meanwhile. A worker keeps its
    # place while it waits for its resource's next event, so it gives it up quickly: its own
    # patch's echo finds a free worker soon enough, and with kopf's 5 s, 40 workers made
    # a restart's resume of 1,000 resources take two minutes. Memory grows with the workers
    # (1,000 applied at once: 40 peaked at 104 MB RSS, 200 at 207 MB; bench/operator_scale.py).
    config.queueing.worker_limit = _WORKERS
    config.queueing.idle_timeout = 0.1
    return config


_WORKERS = 50
"""Resources kopf handles at once (see `operator_settings`)."""
