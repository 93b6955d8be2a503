"""Completes released executions in HubSpot: few requests, within budget, nothing lost.

One portal's released callbacks go out in batches of up to 100 (HubSpot's batch endpoint), each
request first taking a call from the portal's budget shared by all pods. What HubSpot answers
decides each callback's fate (shared/hubspot-contract.md §5, §6):
- 204: completed.
- 429: the portal is held for the whole window on every pod; the rest is retried after it.
- 401: refresh the token once (single flight across pods) and resend; a refresh token HubSpot
  refuses means the app was uninstalled, so the portal stops and its callbacks fail with that
  reason. The token endpoint refusing the app itself (client secret, 403, a proxy) stops
  nobody: like any token trouble, the callbacks go back to their queue and wait.
- 5xx, timeouts: this batch and the rest are retried after a back-off (back to the head of
  their queue) instead of spending the budget on more errors.
- "already completed": an earlier request of ours went through though its answer was lost or
  late, so those callbacks are completed (noted in their history), never failed, and cost no
  call of their own; the rest of the refused batch is sent again.
- another 4xx: the batch is split in halves until the offending callbacks stand alone; those are
  recorded as terminal, every other one is completed. (If HubSpot names the offenders, they are
  taken out at once.)

Every request asks the token manager for the token (it keeps it in memory until near expiry), so
a batch that waited never goes with a token that expired meanwhile.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import aiohttp

from throttle.dispatcher.complete import CompletionResult
from throttle.engine.inline import PREFIX as INLINE_PREFIX
from throttle.engine.inline_index import InlineNotes
from throttle.engine.queue import Released
from throttle.hubspot.budget import BudgetGrant, PortalBudget
from throttle.hubspot.client import (
    MAX_BATCH,
    CallbackCompletion,
    HubSpotClient,
    RateLimited,
    Rejected,
    Retryable,
    Success,
    Unauthorized,
)
from throttle.hubspot.config_fault import FaultRecord
from throttle.hubspot.crypto import TokenCipher
from throttle.hubspot.tokens import (
    ConfigFaultActive,
    PortalStopped,
    TokenManager,
    TokenStore,
    TokenUnavailable,
)
from throttle.metrics import Metrics
from throttle.settings import Settings

log = logging.getLogger(__name__)


class TokenSource(Protocol):
    async def access_token(self, portal_id: int, rejected: str | None = None) -> str: ...

    def config_fault(self) -> FaultRecord | None: ...

    async def recheck(self) -> None: ...


def output_fields(item: Released, notes: InlineNotes | None = None) -> dict[str, Any]:
    """The action's output fields (action_definition.json) for a released execution; one of an
    inline queue (engine/inline.py) also says so, and why its rate is not the fields' own (a
    clamp, a bad value) when it is not; the priority's only when the action sent one (an older
    action's are as they always were)."""
    fields: dict[str, Any] = {
        "hs_execution_state": item.execution_state,
        "throttle_status": "released" if item.execution_state == "SUCCESS" else "failed",
        "throttle_wait_seconds": round(max(item.wait_seconds, 0.0)),
        "throttle_policy": item.policy,
    }
    if item.policy.startswith(INLINE_PREFIX):
        fields["throttle_applied"] = "inline"
        note = notes.note(item.policy_key) if notes is not None else ""
        if note:
            fields["throttle_reason"] = note
    if item.priority.given:
        fields.update(item.priority.output_fields())
    return fields


class HubSpotCompleter:
    """The dispatcher's `Completer` for HubSpot."""

    def __init__(
        self,
        client: HubSpotClient,
        tokens: TokenSource,
        budget: PortalBudget,
        metrics: Metrics | None = None,
        max_budget_wait_s: float = 1.0,
        retry_backoff_s: float = 1.0,
        token_retry_s: float = 5.0,
        batch_size: int = MAX_BATCH,
        unknown_grace_s: float = 120.0,
        notes: InlineNotes | None = None,
    ) -> None:
        self._client = client
        self.tokens = tokens
        self._budget = budget
        self._metrics = metrics
        self._max_budget_wait = max_budget_wait_s
        self._retry_backoff = retry_backoff_s
        self._token_retry = token_retry_s
        self._batch_size = min(batch_size, MAX_BATCH)
        self._unknown_grace = unknown_grace_s
        self._notes = notes

    async def _load_notes(self, items: Sequence[Released]) -> None:
        """The notes of the inline queues among `items`; without them (Redis unreachable) the
        completions still go, without the reason."""
        inline = [item.policy_key for item in items if item.policy.startswith(INLINE_PREFIX)]
        if self._notes is None or not inline:
            return
        try:
            await self._notes.load(inline)
        except Exception as exc:
            log.warning("inline queues' notes unavailable (%s)", type(exc).__name__)

    @property
    def call_timeout_s(self) -> float:
        """The longest one HubSpot request may take."""
        return self._client.timeout_s

    async def complete(self, portal_id: int, items: Sequence[Released]) -> CompletionResult:
        result = CompletionResult()
        if not items:
            return result
        by_id = {item.callback_id: item for item in items}
        ids = list(by_id)
        await self._load_notes(items)
        # A stack of batches; splitting pushes the halves back on top, so order is kept.
        pending: list[_Job] = [
            _Job(ids[i : i + self._batch_size]) for i in range(0, len(ids), self._batch_size)
        ][::-1]
        refreshed = False
        rejected_token: str | None = None
        while pending:
            job = pending.pop()
            batch = job.ids
            # The token is asked for per request (the manager keeps it in memory): a batch that
            # waited behind slow answers never goes with a token that expired meanwhile.
            try:
                token = await self.tokens.access_token(portal_id, rejected=rejected_token)
            except PortalStopped as stopped:
                return self._stop(result, _flatten(job, pending), stopped.reason)
            except ConfigFaultActive:  # said once by the token manager, not per portal and call
                return self._pause(result, _flatten(job, pending), self._token_retry)
            except TokenUnavailable as exc:
                log.warning("portal %s: no token yet (%s); will retry", portal_id, exc)
                return self._pause(result, _flatten(job, pending), self._token_retry)
            except Exception as exc:  # PostgreSQL or Redis unreachable: nothing lost, retry later
                log.warning(
                    "portal %s: token store unavailable (%s)", portal_id, type(exc).__name__
                )
                return self._pause(result, _flatten(job, pending), self._token_retry)
            try:
                grant = await self._budget.take(portal_id, self._max_budget_wait)
            except Exception as exc:  # Redis unreachable: keep what is done, retry the rest
                log.warning("portal %s: budget unavailable (%s)", portal_id, type(exc).__name__)
                return self._pause(result, _flatten(job, pending), self._token_retry)
            if not grant.granted:
                self._observe_budget_wait(portal_id)
                result.budget_spent = not result.retry
                return self._defer(result, _flatten(job, pending), grant.wait_seconds)
            entries = [CallbackCompletion(i, output_fields(by_id[i], self._notes)) for i in batch]
            held = 0.0
            try:
                # A lone callback goes to the single endpoint: its 404 (HubSpot does not know
                # the callback) tells "not blocked yet" apart from expired or already completed.
                answer = await (
                    self._client.complete_one(token, entries[0])
                    if len(entries) == 1
                    else self._client.complete_batch(token, entries)
                )
                if isinstance(answer, RateLimited):
                    # Before the slot is freed, so no other pod's call slips in meanwhile.
                    held = await self._budget.hold(portal_id, answer.wait_seconds)
            finally:
                await self._release(portal_id, grant)
            match answer:
                case Success():
                    result.completed.extend(batch)
                    self._count("completed", len(batch))
                    self._already(result, job.confirms)
                case RateLimited():
                    if self._metrics is not None:
                        self._metrics.hubspot_rate_limited.labels(str(portal_id)).inc()
                    log.warning("portal %s: HubSpot answered 429; holding %.1f s", portal_id, held)
                    return self._pause(result, _flatten(job, pending), held)
                case Unauthorized(status=status):
                    if refreshed:
                        log.warning("portal %s: HubSpot still answers %s", portal_id, status)
                        return self._pause(result, _flatten(job, pending), self._token_retry)
                    refreshed = True
                    rejected_token = token
                    pending.append(job)
                case Retryable(reason=reason):
                    # HubSpot is struggling: back off with everything left rather than spend
                    # the budget on more errors (the contract: errors under 5% of calls). The
                    # request may have been applied: a re-send is answered "already completed".
                    log.warning("portal %s: completion failed (%s); will retry", portal_id, reason)
                    return self._pause(result, _flatten(job, pending), self._retry_backoff)
                case Rejected():
                    if job.confirms:  # the batch they depended on was refused: ask about them
                        pending.append(_Job(job.confirms))
                    if answer.only_already_completed:
                        self._sort_out_completed(batch, answer, pending, result, by_id)
                    else:
                        self._isolate(batch, answer, pending, result, by_id)
        return result

    def _sort_out_completed(
        self,
        batch: list[str],
        answer: Rejected,
        pending: list[_Job],
        result: CompletionResult,
        by_id: dict[str, Released],
    ) -> None:
        """HubSpot refused the batch only because some of it is already completed (an earlier
        request of ours went through; its answer was lost or late): those are done, and cost no
        call of their own. The refusal applied nothing, so the rest is sent again.

        Which ones, when HubSpot does not name them: all of them if it counts as many errors
        as the batch holds; else the ones sent before (taken more than once), if they are as
        many as the errors, provided the others then go through on their own (a callback never
        sent cannot be already completed, except after history was rebuilt). Only when the
        count does not fit is the batch halved (a lone callback's answer is unambiguous)."""
        named = [i for i in answer.already_completed_ids if i in batch]
        if named:
            done = set(named)
        elif answer.already_completed >= len(batch):
            done = set(batch)
        else:
            sent = [i for i in batch if by_id[i].attempts > 1]
            fresh = [i for i in batch if by_id[i].attempts <= 1]
            if len(sent) == answer.already_completed and fresh:
                pending.append(_Job(fresh, confirms=sent))
            else:
                half = len(batch) // 2
                pending.append(_Job(batch[half:]))
                pending.append(_Job(batch[:half]))
            return
        self._already(result, [i for i in batch if i in done])
        rest = [i for i in batch if i not in done]
        if rest:
            pending.append(_Job(rest))

    def _already(self, result: CompletionResult, callback_ids: Sequence[str]) -> None:
        result.already_completed.extend(callback_ids)
        self._count("already_completed", len(callback_ids))

    async def _release(self, portal_id: int, grant: BudgetGrant) -> None:
        try:
            await self._budget.release(portal_id, grant)
        except Exception as exc:  # the slot's lease frees it anyway
            log.warning("portal %s: budget release failed (%s)", portal_id, type(exc).__name__)

    def _isolate(
        self,
        batch: list[str],
        answer: Rejected,
        pending: list[_Job],
        result: CompletionResult,
        by_id: dict[str, Released],
    ) -> None:
        """Split a rejected batch so the callbacks at fault end up alone, then record them.

        A lone callback HubSpot does not know (404) that was queued moments ago is retried for
        a while: HubSpot may not have recorded our BLOCK answer yet (the answer was lost when a
        webhook pod died, and HubSpot's retry of the delivery has not arrived). A named one
        HubSpot says is already completed is completed, not failed."""
        done = [i for i in answer.already_completed_ids if i in batch]
        if done:
            self._already(result, done)
            batch = [i for i in batch if i not in set(done)]
            if not batch:
                return
        named = [i for i in answer.callback_ids if i in batch]
        reason = f"HubSpot refused the completion (HTTP {answer.status}): {answer.reason}"
        if len(batch) == 1:
            age = time.time() - by_id[batch[0]].enqueued_at
            if answer.status == 404 and age < self._unknown_grace:
                self._defer(result, batch, self._retry_backoff)
                return
            result.failed[batch[0]] = reason
            self._count("failed", 1)
        elif named:
            for callback_id in named:
                result.failed[callback_id] = reason
            self._count("failed", len(named))
            rest = [i for i in batch if i not in set(named)]
            if rest:
                pending.append(_Job(rest))
        elif done:
            if batch:
                pending.append(_Job(batch))
        else:
            half = len(batch) // 2
            pending.append(_Job(batch[half:]))
            pending.append(_Job(batch[:half]))

    def _stop(self, result: CompletionResult, ids: list[str], reason: str) -> CompletionResult:
        result.portal_stopped = reason
        for callback_id in ids:
            result.failed[callback_id] = reason
        self._count("failed", len(ids))
        return result

    def _defer(self, result: CompletionResult, ids: list[str], wait: float) -> CompletionResult:
        result.retry.extend(ids)
        result.retry_after = max(result.retry_after, wait)
        self._count("retry", len(ids))
        return result

    def _pause(self, result: CompletionResult, ids: list[str], wait: float) -> CompletionResult:
        """Defer these, and tell the dispatcher the whole portal must wait as long."""
        result.portal_paused = True
        return self._defer(result, ids, wait)

    def _count(self, outcome: str, n: int) -> None:
        if self._metrics is not None and n:
            self._metrics.hubspot_callbacks.labels(outcome).inc(n)

    def _observe_budget_wait(self, portal_id: int) -> None:
        if self._metrics is not None:
            self._metrics.hubspot_budget_waits.labels(str(portal_id)).inc()


def build_completer(
    settings: Settings,
    session: aiohttp.ClientSession,
    redis: Any,
    pool: Any,
    metrics: Metrics | None = None,
) -> HubSpotCompleter:
    """The completer `throttle dispatcher` uses: client, encrypted tokens, shared budget."""
    client = HubSpotClient.from_settings(session, settings, metrics)
    store = TokenStore(pool, TokenCipher(settings.encryption_keys))
    tokens = TokenManager(
        store,
        client,
        redis,
        metrics,
        refresh_margin_s=settings.hubspot_token_refresh_margin_seconds,
    )
    budget = PortalBudget.from_settings(redis, settings)
    return HubSpotCompleter(client, tokens, budget, metrics, notes=InlineNotes(redis))


@dataclass
class _Job:
    """One request to make: `ids`; if HubSpot accepts it, `confirms` are already completed (see
    `HubSpotCompleter._sort_out_completed`)."""

    ids: list[str]
    confirms: list[str] = field(default_factory=list)


def _flatten(job: _Job, pending: list[_Job]) -> list[str]:
    """The current batch and everything still pending, in their original order."""
    return [i for j in [job, *reversed(pending)] for i in [*j.ids, *j.confirms]]
