"""`POST /api/hubspot/action`: verify → parse → resolve the policy → ONE enqueue → answer.

This is the hottest path and the one open to the internet, so it does only in-memory work plus
the single Redis round trip of `Queue.enqueue`: the policy comes from the in-process
`PolicyIndex`, the installed portals from `InstalledPortals`; never PostgreSQL, Kubernetes or
HubSpot.

Answers (HTTP 200 with a JSON body unless the request itself is bad):
- queued or a duplicate callbackId → `BLOCK` with the policy's expiration (a duplicate is the
  same answer, not enqueued twice); an execution whose input fields carry an inline rate is
  queued in its inline queue (`inline_rates.py`; a queue's first execution on a pod costs one
  Redis round trip more, which writes it through the registry);
- the queue is already longer than the expiration can drain → the policy's `overflow`:
  `Block` (queued anyway), `Continue` (`SUCCESS` now), `Fail` (`FAIL_CONTINUE` with a reason);
- a portal never seen before → 503 while the installs are re-read at once (it may have installed
  a moment ago through another pod; the pod that ran its OAuth callback knows it already); once
  that re-read is done — about a second, bounded in `portals.py` — it is known or "not
  installed" (below);
- the portal has not installed the app (or uninstalled it) → `FAIL_CONTINUE` with the reason in
  `throttle_reason`: the workflow moves on at once and the reason is visible in the workflow's
  history. A 4xx would do the same for HubSpot but hides the reason; BLOCK would hold records
  that nothing can ever release (no token);
- the policy is not in this pod's memory (the one named in the input fields, or none resolves;
  the index reloads only every 2 s) → before answering, one fresh read of the registry, shared
  by every request waiting for one and at most one per 50 ms per pod
  (`PolicyIndex.refresh_since`). A policy created before the request arrived — through any pod,
  the operator or a manifest — is then found and the execution queued in its own queue: `BLOCK`.
  Only if the registry really has no policy for it: `FAIL_CONTINUE` with "portal P has no
  policy named 'x', no policy for action A and no default policy …";
- bad signature → 401, bad payload → 400 naming the field (HubSpot treats both as a failed
  action and continues) — except a signature that fails the way a client secret changed at
  HubSpot makes every one fail (`verification.SecretMismatchWatch`): 503 `secret_mismatch`,
  which HubSpot retries, so no execution passes unthrottled while the secret is being fixed;
- Redis unreachable (the enqueue, or the registry while this pod has never loaded it) → 503,
  which HubSpot retries with backoff for days: nothing is dropped silently.

Why a fresh read rather than holding or a retryable status for "not in memory": it settles the
question in milliseconds and leaves nothing to resolve later. A `BLOCK` into a holding queue
would hold executions of a policy that may never exist, and need a sweeper and an invented
expiration for them; a 503 costs every execution of a new policy a HubSpot retry, after
HubSpot's backoff. The read is one GET of the registry's revision (a full reload only
when it moved), on this rare path only; shared and spaced, it cannot multiply one request into
many Redis calls. The execution it finds a policy for is held in that policy's own queue even
if the rate parameters are not in Redis yet (the registry entry is written first): the
dispatcher looks for them every second and the reconcile schedules the queue the moment it
writes them. Nothing here writes policy parameters.
"""

from __future__ import annotations

import json
import logging
import time
from datetime import timedelta
from typing import Any

from aiohttp import web
from redis.exceptions import RedisError

from throttle import bounded_cache
from throttle.engine.policy import Policy
from throttle.engine.policy_index import PolicyIndex
from throttle.engine.queue import EnqueueResult, QueueItem
from throttle.metrics import Metrics
from throttle.webhook_service.appkeys import (
    INSTALLED,
    METRICS,
    POLICY_INDEX,
    QUEUE,
    SETTINGS,
    VERIFIER,
)
from throttle.webhook_service.errors import ErrorAnswer, error_for, error_response
from throttle.webhook_service.inline_rates import InlineRates
from throttle.webhook_service.payloads import (
    ExecutionPayload,
    execution_priority,
    inline_fields,
    parse_execution,
)
from throttle.webhook_service.shedding import LoadShedder
from throttle.webhook_service.verification import SignatureVerifier, refusal

log = logging.getLogger(__name__)

POLICY_FIELD = "policy"
"""The action's input field naming the policy (see throttle/hubspot/action_definition.json)."""

REASON_FIELD = "throttle_reason"
STATUS_FIELD = "throttle_status"
POLICY_OUT_FIELD = "throttle_policy"
JSON_HEADERS = {"Content-Type": "application/json"}


def block(policy: Policy) -> dict[str, Any]:
    return {
        "outputFields": {
            "hs_execution_state": "BLOCK",
            "hs_expiration_duration": policy.expiration_iso,
        }
    }


class BlockAnswers:
    """The BLOCK answer's bytes per expiration, serialised once: nearly every request gets one
    of a handful of them, and `json.dumps` of it costs several microseconds each time
    (bench/caches.py)."""

    MAX_ENTRIES = 1_000

    def __init__(self) -> None:
        self._bodies: dict[timedelta, bytes] = {}

    def body(self, policy: Policy) -> bytes:
        expiration = policy.expiration
        body = self._bodies.get(expiration)
        if body is None:
            body = json.dumps(block(policy)).encode()
            bounded_cache.put(self._bodies, expiration, body, self.MAX_ENTRIES)
        return body


def passed(policy: Policy, reason: str) -> dict[str, Any]:
    return {
        "outputFields": {
            "hs_execution_state": "SUCCESS",
            STATUS_FIELD: "passed",
            POLICY_OUT_FIELD: policy.name,
            "throttle_wait_seconds": 0,
            REASON_FIELD: reason,
        }
    }


def failed(reason: str, policy: Policy | None = None) -> dict[str, Any]:
    fields: dict[str, Any] = {
        "hs_execution_state": "FAIL_CONTINUE",
        STATUS_FIELD: "failed",
        REASON_FIELD: reason,
    }
    if policy is not None:
        fields[POLICY_OUT_FIELD] = policy.name
    return {"outputFields": fields}


class PolicyResolver:
    """`PolicyIndex.resolve`, remembered until the index reloads.

    Resolving to the global default copies that policy for the portal on every call; at
    thousands of requests a second the copy costs more than the signature check
    (bench/caches.py), so answers are kept per (portal, action, name) and dropped whenever the
    index's revision moves. The copy kept is also what lets `Queue.enqueue` find its keys
    built for that policy object. "No policy" is not kept: it is the rare path, and the
    webhook looks again before answering it."""

    MAX_ENTRIES = 50_000

    def __init__(self, index: PolicyIndex) -> None:
        self.index = index
        self._revision = -2
        self._cache: dict[tuple[int, int, str | None], Policy] = {}

    def resolve(self, portal_id: int, action_id: int, name: str | None) -> Policy | None:
        if self.index.revision != self._revision:
            self._cache.clear()
            self._revision = self.index.revision
        key = (portal_id, action_id, name)
        policy = self._cache.get(key)
        if policy is None:
            policy = self.index.resolve(portal_id, action_id, name)
            if policy is not None:
                bounded_cache.put(self._cache, key, policy, self.MAX_ENTRIES)
        return policy


def requested_policy(payload: ExecutionPayload) -> str | None:
    value = payload.input_fields.get(POLICY_FIELD)
    if value is None:
        return None
    if not isinstance(value, str):
        raise ErrorAnswer(
            400,
            "invalid_payload",
            f"inputFields.{POLICY_FIELD}: must be a string",
            f"inputFields.{POLICY_FIELD}",
        )
    return value.strip() or None


def no_policy_reason(portal_id: int, action_id: int, name: str | None) -> str:
    named = f"no policy named {name!r}, " if name else ""
    return (
        f"portal {portal_id} has {named}no policy for action {action_id} "
        "and no default policy (its own or the global one)"
    )


def overflow_reason(policy: Policy, depth: int) -> str:
    if policy.paused:
        return f"policy {policy.name!r} is paused and set to overflow: {policy.overflow}"
    return (
        f"policy {policy.name!r} already holds {depth} executions, more than it can release "
        f"within its expiration {policy.expiration_iso}"
    )


def _encoded(answer: dict[str, Any]) -> bytes:
    return json.dumps(answer).encode()


class ActionMetrics:
    """The action endpoint's metrics: the tally for what every request counts, and the refusal
    counters' children bound once (`labels()` costs microseconds per call)."""

    def __init__(self, metrics: Metrics) -> None:
        tally = metrics.webhook_actions
        self.answered = tally.answered
        self.observe = tally.observe
        self._signed = tally.signed
        self.rejected_signature = metrics.webhook_rejected.labels("action", "signature")
        self.rejected_payload = metrics.webhook_rejected.labels("action", "payload")

    def signed(self, version: str | None, previous_secret: bool) -> None:
        self._signed(version or "none", "previous" if previous_secret else "current")


Answer = tuple[str, bytes]
"""(answer kind for metrics, JSON body)."""


class ActionEndpoint:
    """`POST /api/hubspot/action`, with everything it uses bound once the app has started.

    The cleanup contexts create the queue, the policy index and the installed-portals view;
    `bind` (an on_startup hook, run after them) keeps direct references, because looking each
    up in the app on every request cost as much as the payload parsing.

    `handle` is one coroutine from aiohttp down to `Queue.enqueue`: it sheds load and answers
    its own errors (the same `LoadShedder.refusal` and `errors.error_for` the other routes get
    from their wrappers), and the steps before and after the Redis call are plain methods.
    Every coroutine layer between aiohttp and the Redis reply is suspended and resumed once per
    request, 1-2 µs each: the wrappers and a separate `answer` coroutine cost more than the
    payload parsing and the signature together (bench/RESULTS.md, webhook ingest)."""

    def __init__(self, metrics: Metrics, verifier: SignatureVerifier, shedder: LoadShedder) -> None:
        self.counts = ActionMetrics(metrics)
        self.verifier = verifier
        self.shedder = shedder
        self.answers = BlockAnswers()

    async def bind(self, app: web.Application) -> None:
        self.require_installed = app[SETTINGS].require_installed_portal
        self.installed = app[INSTALLED]
        self.index = app[POLICY_INDEX]
        self.resolver = PolicyResolver(self.index)
        self.queue = app[QUEUE]
        self.inline = InlineRates(app[SETTINGS], self.index, self.queue)

    async def handle(self, request: web.Request) -> web.Response:
        shedder = self.shedder
        held = shedder.claim(request)  # a slot taken at the connection (early_shed.py)
        if not held:
            refused = shedder.refusal(request, "action")
            if refused is not None:
                return refused
        try:
            body = await shedder.read_body(request)  # before taking a slot (shedding.py)
        except Exception as exc:  # too slow (408), too large (413)
            shedder.inflight -= held
            return error_for(request, exc)
        shedder.inflight += not held
        counts = self.counts
        started = time.perf_counter()
        try:
            payload = self.verified(request, body)
            name = requested_policy(payload)
            inline = inline_fields(payload)
            if inline is None:
                policy, note = self.policy_for(payload, name), ""
            else:
                policy, note = await self.inline_policy(payload, name, inline)
            if policy is None:
                policy = await self.looked_up(payload, name)
            if isinstance(policy, Policy):
                result = await self.queue.enqueue(self.item(payload, name, note), policy)
                kind, answer = self.answer_for(result)
            else:
                kind, answer = policy
        except ErrorAnswer as exc:
            if exc.status == 503:
                counts.answered(exc.error)  # unavailable, or secret_mismatch
            elif exc.status != 401:
                counts.rejected_payload.inc()
            return error_for(request, exc)
        except (RedisError, OSError) as exc:
            counts.answered("unavailable")
            log.warning("action not queued, asking HubSpot to retry: Redis %s", type(exc).__name__)
            return error_response(
                503,
                "unavailable",
                "the queue is unreachable; retry later",
                headers={"Retry-After": "10"},
            )
        except Exception as exc:
            return error_for(request, exc)
        finally:
            shedder.inflight -= 1
        counts.answered(kind)
        counts.observe(time.perf_counter() - started)
        return web.Response(body=answer, headers=JSON_HEADERS)

    def verified(self, request: web.Request, body: bytes) -> ExecutionPayload:
        """The execution HubSpot signed, parsed; 401 or 400 otherwise."""
        check = self.verifier.check(request, body)
        if not check.ok:
            self.counts.rejected_signature.inc()
            log.debug("action refused: %s", check.reason)  # the access log has the status line
            raise refusal(check)
        self.counts.signed(check.version, bool(check.secret_index))
        return parse_execution(body)

    async def inline_policy(
        self, payload: ExecutionPayload, name: str | None, values: dict[str, str]
    ) -> tuple[Policy | Answer | None, str]:
        """`policy_for` for an execution that carries inline-rate fields (inline_rates.py): its
        inline queue, or the portal's policy when inline rates do not apply; and the note its
        history keeps."""
        refused = self.refused(payload)
        if refused is not None:
            return refused, ""
        decision, note = await self.inline.route(payload, name, values)
        if decision is None:
            return self.policy_for(payload, name), note
        return decision.policy, note

    def policy_for(self, payload: ExecutionPayload, name: str | None) -> Policy | Answer | None:
        """The policy to queue the execution in (`name`: the one its input fields ask for),
        the answer when it is not to be queued (the portal has not installed the app), or
        None when this pod's memory has no such policy: then `looked_up` decides."""
        refused = self.refused(payload)
        if refused is not None:
            return refused
        policy = self.resolver.resolve(
            payload.origin.portal_id, payload.origin.action_definition_id, name
        )
        if policy is None or (name is not None and policy.name != name):
            return None  # not in memory (never loaded, or created a moment ago elsewhere?)
        return policy

    def refused(self, payload: ExecutionPayload) -> Answer | None:
        """The answer when the execution is not to be queued (the portal has not installed the
        app); 503 while a portal's install may be on its way through another pod."""
        portal_id = payload.origin.portal_id
        if self.require_installed:
            state = self.installed.state(portal_id)
            if state is not None and state.pending:
                # Perhaps installed a moment ago through another pod: a refresh is on its way.
                raise ErrorAnswer(
                    503,
                    "unavailable",
                    f"portal {portal_id}: {state.reason}; retry later",
                    headers={"Retry-After": "5"},
                )
            if state is not None and not state.installed:
                return "not_installed", _encoded(failed(f"portal {portal_id}: {state.reason}"))
        return None

    async def looked_up(self, payload: ExecutionPayload, name: str | None) -> Policy | Answer:
        """Resolve again after a fresh read of the registry (`PolicyIndex.refresh_since`: one
        read shared by every request waiting for it, at most one per 50 ms per pod). Only
        now is "no policy" an answer; a named policy still missing falls back as usual."""
        await self.index.refresh_since()
        portal_id = payload.origin.portal_id
        action_id = payload.origin.action_definition_id
        policy = self.resolver.resolve(portal_id, action_id, name)
        if policy is None:
            return "no_policy", _encoded(failed(no_policy_reason(portal_id, action_id, name)))
        return policy

    @staticmethod
    def item(payload: ExecutionPayload, name: str | None, note: str = "") -> QueueItem:
        obj = payload.object
        inputs = {
            k: v if isinstance(v, str) else json.dumps(v) for k, v in payload.input_fields.items()
        }
        return QueueItem(
            callback_id=payload.callback_id,
            portal_id=payload.origin.portal_id,
            action_definition_id=payload.origin.action_definition_id,
            workflow_id=payload.context.workflow_id,
            object_type=obj.object_type if obj else "",
            object_id=str(obj.object_id) if obj else "",
            policy=name,
            input_fields=inputs,
            priority=execution_priority(inputs),
            note=note,
        )

    def answer_for(self, result: EnqueueResult) -> Answer:
        status, policy = result.status, result.policy
        if status == "overflow":
            reason = overflow_reason(policy, result.depth)
            if policy.overflow == "Continue":
                return "continue", _encoded(passed(policy, reason))
            return "fail", _encoded(failed(reason, policy))
        if status == "expired":
            return "fail", _encoded(failed("the execution expired before it was queued", policy))
        # queued, or a duplicate of one queued: the same BLOCK answer
        return ("block" if status == "queued" else "duplicate"), self.answers.body(policy)


def routes(app: web.Application, shedder: LoadShedder) -> list[web.RouteDef]:
    """The action endpoint's route for `app`; it sheds and answers errors itself, so it goes
    in neither `LoadShedder.guard` nor `errors.json_errors` (its references are bound when the
    app starts)."""
    endpoint = ActionEndpoint(app[METRICS], app[VERIFIER], shedder)
    app.on_startup.append(endpoint.bind)
    return [web.post("/api/hubspot/action", endpoint.handle)]
