"""The engine's queues in domain words: enqueue, take, ack, requeue, fail, reap, stats.

Each method is one script call (or one per shard involved) — see `throttle/engine/lua/` for what
each does atomically, and `throttle/engine/keys.py` for the layout; `awaiting_params` alone is a
plain read. `time_offset_ms` shifts Redis' clock as the scripts see it; only tests set it, to
drive time without sleeping.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Literal, NamedTuple

import msgspec

from throttle import bounded_cache
from throttle.engine import keys
from throttle.engine.forecast import capacity_within
from throttle.engine.policy import Policy
from throttle.engine.policy_encoding import redis_fields
from throttle.engine.priority import NOT_GIVEN, Priority
from throttle.engine.scripts import ClockShift, Lease, ScriptCall, Scripts

_JSON = msgspec.json.Encoder()

EnqueueStatus = Literal["queued", "duplicate", "overflow", "expired"]
_STATUS: dict[int, EnqueueStatus] = {1: "queued", 0: "duplicate", 2: "overflow", 3: "expired"}
RetireMode = Literal["Drain", "SUCCESS", "FAIL_CONTINUE"]


_NO_INPUTS: Mapping[str, str] = MappingProxyType({})
_CACHED_POLICIES = 10_000
"""Bound of `Queue`'s per-policy caches (entries hold their policy objects alive)."""


class QueueItem(NamedTuple):
    """One execution HubSpot asked us to hold, as the webhook parsed it. A named tuple rather
    than a frozen dataclass: built on every webhook request, where the dataclass' `__init__`
    shows in the request's cost (bench/RESULTS.md, "Engine")."""

    callback_id: str
    portal_id: int
    action_definition_id: int
    workflow_id: int | None
    object_type: str
    object_id: str
    policy: str | None = None
    """The policy named in the action's input fields, if any (the one it landed in may differ)."""
    received_at: float = 0.0
    """Epoch seconds; 0 = now. Set when rebuilding queues from history (`throttle recover`)."""
    input_fields: Mapping[str, str] = _NO_INPUTS
    note: str = ""
    """Why it is held where it is, for the builder (an inline rate clamped, a bad value: see
    engine/inline.py); kept in its history."""
    priority: Priority = NOT_GIVEN
    """Its place in the queue (engine/priority.py); parsed from `input_fields` by the caller,
    so history's copy of the inputs rebuilds it."""

    def event_body(self) -> bytes:
        """What history keeps of the execution (enough to rebuild the queue item): JSON, by
        msgspec rather than `json.dumps`, because it runs once per request (bench/RESULTS.md,
        "Engine")."""
        body = {
            "portal": self.portal_id,
            "action": self.action_definition_id,
            "workflow": self.workflow_id,
            "objectType": self.object_type,
            "objectId": self.object_id,
            "requested": self.policy,
            "inputs": dict(self.input_fields),
        }
        if self.note:
            body["note"] = self.note
        return _JSON.encode(body)


class EnqueueResult(NamedTuple):
    """A tuple rather than a frozen dataclass, as `QueueItem`: built on every webhook request."""

    status: EnqueueStatus
    depth: int
    """Queue length after the call (for overflow: the length that made it refuse)."""
    policy: Policy
    queue: str

    @property
    def duplicate(self) -> bool:
        return self.status == "duplicate"

    @property
    def queued(self) -> bool:
        return self.status in ("queued", "duplicate")


@dataclass(frozen=True)
class Released:
    """One execution the rate allowed out of its queue (leased to this dispatcher)."""

    callback_id: str
    portal_id: int
    policy: str
    queue: str
    enqueued_at: float
    attempts: int
    """Its release count, this one included: the attempt number its lease is held under."""
    wait_seconds: float
    execution_state: str = "SUCCESS"
    """What to complete it with: SUCCESS normally; FAIL_CONTINUE or SUCCESS when its policy was
    deleted with "complete now" (the execution never waited out the rate)."""
    released_at_us: int = 0
    """When the rate let it go, on Redis' clock (microseconds since the epoch)."""
    priority: Priority = NOT_GIVEN

    @property
    def policy_key(self) -> str:
        return keys.policy_key(self.portal_id, self.policy)

    @property
    def ref(self) -> str:
        """The queue ref in Redis (`portal:policy:queue`)."""
        return keys.queue_ref(self.policy_key, self.queue)

    @property
    def lease(self) -> Lease:
        """Its lease as the settling scripts name it; `attempts` is the fencing token: it was
        taken under this attempt, and once taken again the older number changes nothing."""
        return (self.ref, self.callback_id, self.attempts)


@dataclass(frozen=True)
class _EnqueueTarget:
    """Everything an enqueue into one queue of one policy sends besides the execution itself,
    built once per policy object and queue rather than per request: key building, the shard
    hash and reading the policy's fields are most of the enqueue's own Python work
    (bench/RESULTS.md, "Engine")."""

    policy: Policy
    keys: tuple[str, ...]
    prefix: str
    ref: str
    qid: str
    expiration_ms: int
    revision: int
    blocking: bool

    @classmethod
    def build(cls, policy: Policy, qid: str) -> _EnqueueTarget:
        pkey = policy.key
        shard = keys.shard_of(pkey)
        return cls(
            policy=policy,
            # In the order enqueue.lua lists its KEYS.
            keys=(
                keys.due(shard),
                keys.params(pkey),
                keys.meta(pkey),
                keys.done(pkey),
                keys.queues(pkey),
                keys.queue_list(pkey, qid),
                keys.queue_state(pkey, qid),
                keys.stats(pkey),
                keys.awaiting_params(shard),
                keys.queue_priority(pkey, qid),
                keys.prioritized(shard),
            ),
            prefix=keys.shard_prefix(shard),
            ref=keys.queue_ref(pkey, qid),
            qid=qid,
            expiration_ms=round(policy.expiration.total_seconds() * 1000),
            revision=policy.revision,
            blocking=policy.overflow == "Block",
        )


@dataclass(frozen=True)
class TakeResult:
    released: list[Released]
    expired: int
    next_due: dict[int, float]
    """Shard -> the earliest due time (epoch seconds) left in its schedule (absent = none)."""
    redis_now: float
    lags: list[float] = field(default_factory=list)
    """For each queue that released: seconds between its due time and the take."""


@dataclass(frozen=True)
class PolicyStats:
    depth: int
    in_flight: int
    oldest_age_seconds: float
    queues: int
    received: int
    released: int
    acked: int
    failed: int
    expired: int
    requeued: int
    last_release_at: float | None
    queue_days: tuple[tuple[int, int, int], ...] = ()
    """When asked for (`stats_many(..., per_queue=True)`): each queue's cap day (-1: none yet),
    its count that day and its depth, as take.lua keeps them."""


@dataclass
class Queue:
    """The engine's Redis state behind one client (redis.asyncio.Redis or RedisCluster)."""

    redis: Any
    lease_seconds: float = 60.0
    events_maxlen: int = 100_000
    """Bound of each shard's history stream (the buffer while PostgreSQL is behind)."""
    dedupe_seconds: float = 86_400.0
    """How long a finished callback id is still recognised as a duplicate."""
    time_offset_ms: ClockShift = 0
    """Tests only: shifts (or pins) the clock the scripts see; see `scripts.ClockShift`."""
    scripts: Scripts = field(init=False)
    _capacity: dict[tuple[int, int], tuple[Policy, int]] = field(init=False, default_factory=dict)
    _targets: dict[tuple[int, str], _EnqueueTarget] = field(init=False, default_factory=dict)

    def __post_init__(self) -> None:
        self.scripts = Scripts(self.redis)

    # --- the webhook's hot path -----------------------------------------------------------------
    async def enqueue(
        self, item: QueueItem, policy: Policy, *, check_overflow: bool = True
    ) -> EnqueueResult:
        """Hold one execution in `policy`'s queue, in one round trip. It never writes the
        policy's parameters: if Redis has none (or older ones), the queue waits for the policy's
        writer (see `registry.reconcile_awaited`). `check_overflow=False` (used by recovery)
        queues even beyond what fits in the expiration."""
        target = self._target(policy, policy.queue_id(item.workflow_id))
        max_depth = -1 if target.blocking or not check_overflow else self._max_depth(policy)
        status, depth = await self.scripts.call(
            "enqueue",
            target.keys,
            (
                self.time_offset_ms,
                target.prefix,
                target.ref,
                target.qid,
                item.callback_id,
                target.expiration_ms,
                target.revision,
                max_depth,
                self.events_maxlen,
                round(item.received_at * 1_000_000) if item.received_at else 0,
                item.event_body(),
                "" if item.priority is NOT_GIVEN else item.priority.tag,
            ),
        )
        return EnqueueResult(_STATUS[int(status)], int(depth), policy, target.qid)

    def _target(self, policy: Policy, qid: str) -> _EnqueueTarget:
        """The enqueue target of `policy`'s queue `qid`, cached per policy object: a policy
        is never changed in place (a new revision is a new object), and the entry holds the
        object, so its id cannot be reused while cached."""
        cache_key = (id(policy), qid)
        target = self._targets.get(cache_key)
        if target is not None and target.policy is policy:
            return target
        target = _EnqueueTarget.build(policy, qid)
        return bounded_cache.put(self._targets, cache_key, target, _CACHED_POLICIES)

    def _max_depth(self, policy: Policy) -> int:
        """Items that fit before the expiration, cached per policy object and minute as
        `_target` caches (keyed by the policy's content, the key alone cost more than the
        computation for a policy without calendars: bench/caches.py)."""
        cache_key = (id(policy), int(time.time() // 60))
        cached = self._capacity.get(cache_key)
        if cached is not None and cached[0] is policy:
            return cached[1]
        capacity = capacity_within(policy, time.time())
        bounded_cache.put(self._capacity, cache_key, (policy, capacity), _CACHED_POLICIES)
        return capacity

    # --- the dispatcher ---------------------------------------------------------------------------
    async def take(
        self,
        shards: Iterable[int] | None = None,
        *,
        max_items: int = 500,
        queue_quota: int = 100,
        max_queues: int = 200,
        min_hold_seconds: float = 0.0,
    ) -> TakeResult:
        """Release what the due queues of these shards (default all) may release now, nothing
        received less than `min_hold_seconds` ago."""
        shard_list = list(range(keys.SHARDS)) if shards is None else list(shards)
        results = await self.scripts.run_many(
            [
                Scripts.take(
                    keys.due(s),
                    keys.leases(s),
                    now_offset_ms=self.time_offset_ms,
                    prefix=keys.shard_prefix(s),
                    events_maxlen=self.events_maxlen,
                    lease_ms=round(self.lease_seconds * 1000),
                    max_items=max_items,
                    queue_quota=queue_quota,
                    max_queues=max_queues,
                    done_ms=round(self.dedupe_seconds * 1000),
                    min_hold_ms=round(min_hold_seconds * 1000),
                )
                for s in shard_list
            ]
        )
        released: list[Released] = []
        next_due: dict[int, float] = {}
        expired = 0
        redis_now = 0.0
        lags: list[float] = []
        for shard, raw in zip(shard_list, results, strict=True):
            now_us = int(raw[0])
            redis_now = max(redis_now, now_us / 1e6)
            if float(raw[1]) >= 0:
                next_due[shard] = float(raw[1]) / 1000
            expired += int(raw[2])
            last_ref = None
            for i in range(3, len(raw), 7):
                ref = _text(raw[i])
                if ref != last_ref:
                    lags.append(max(0, int(raw[i + 5])) / 1000)
                    last_ref = ref
                portal, policy, qid = ref.split(":", 2)
                enqueued_us = int(raw[i + 2])
                tag = _text(raw[i + 6])
                released.append(
                    Released(
                        callback_id=_text(raw[i + 1]),
                        portal_id=int(portal),
                        policy=policy,
                        queue=qid,
                        enqueued_at=enqueued_us / 1e6,
                        attempts=int(raw[i + 3]),
                        wait_seconds=max(0.0, (now_us - enqueued_us) / 1e6),
                        execution_state=_text(raw[i + 4]),
                        released_at_us=now_us,
                        priority=Priority.from_tag(tag) if tag else NOT_GIVEN,
                    )
                )
        return TakeResult(released, expired, next_due, redis_now, lags)

    async def ack(self, items: Sequence[Released], note: str = "") -> int:
        """These were completed: forget them (their ids stay deduplicated). `note` goes into
        their history with the completion. One taken again since is its new holder's: skipped."""
        done_ms = round(self.dedupe_seconds * 1000)
        answers = await self._per_shard(
            items,
            lambda shard, group: Scripts.ack(
                keys.leases(shard),
                now_offset_ms=self.time_offset_ms,
                prefix=keys.shard_prefix(shard),
                events_maxlen=self.events_maxlen,
                done_ms=done_ms,
                note=note[:500],
                items=[r.lease for r in group],
            ),
        )
        return sum(int(n) for _group, n in answers)

    async def renew(self, items: Sequence[Released], seconds: float) -> set[str]:
        """Extend the leases of these (still leased) executions to at least `seconds` from now;
        returns the callback ids still leased. One left out lost its lease (or was settled, or
        taken again): it may be someone else's to complete now, so it must not be sent."""
        answers = await self._per_shard(
            items,
            lambda shard, group: Scripts.renew(
                keys.leases(shard),
                now_offset_ms=self.time_offset_ms,
                prefix=keys.shard_prefix(shard),
                lease_ms=max(1, round(seconds * 1000)),
                items=[r.lease for r in group],
            ),
        )
        return {
            r.callback_id
            for group, flags in answers
            for r, flag in zip(group, flags, strict=True)
            if int(flag)
        }

    async def requeue(
        self, items: Sequence[Released], delay_seconds: float = 0.0, reason: str = ""
    ) -> int:
        """Back to the head of their queues, in order; the queues wait `delay_seconds` first.
        One whose lease ran out (reaped, or taken again since) is skipped."""
        answers = await self._per_shard(
            items,
            lambda shard, group: Scripts.requeue(
                keys.leases(shard),
                keys.due(shard),
                now_offset_ms=self.time_offset_ms,
                prefix=keys.shard_prefix(shard),
                events_maxlen=self.events_maxlen,
                delay_ms=max(0, round(delay_seconds * 1000)),
                reason=reason[:500],
                items=[r.lease for r in group],
            ),
        )
        return sum(int(n) for _group, n in answers)

    async def fail(self, failures: Sequence[tuple[Released, str]]) -> int:
        """Record these as failed for good, each with its reason. One taken again since is its
        new holder's: skipped."""
        reasons = {r.callback_id: reason[:500] for r, reason in failures}
        done_ms = round(self.dedupe_seconds * 1000)
        answers = await self._per_shard(
            [r for r, _reason in failures],
            lambda shard, group: Scripts.fail(
                keys.leases(shard),
                now_offset_ms=self.time_offset_ms,
                prefix=keys.shard_prefix(shard),
                events_maxlen=self.events_maxlen,
                done_ms=done_ms,
                items=[(r.lease, reasons[r.callback_id]) for r in group],
            ),
        )
        return sum(int(n) for _group, n in answers)

    async def _per_shard(
        self, items: Sequence[Released], call: Callable[[int, list[Released]], ScriptCall]
    ) -> list[tuple[list[Released], Any]]:
        """One script call per shard these executions live in, all in one round trip: each
        shard's group with its script's answer (the settling scripts work on one shard's lease
        index at a time)."""
        groups = list(_by_shard(items).items())
        results = await self.scripts.run_many([call(shard, group) for shard, group in groups])
        return [(group, result) for (_shard, group), result in zip(groups, results, strict=True)]

    async def reap_expired_leases(self, limit: int = 1000) -> int:
        """Return items whose lease ran out (a dispatcher died) to the head of their queues."""
        calls = [
            Scripts.reap(
                keys.leases(s),
                keys.due(s),
                now_offset_ms=self.time_offset_ms,
                prefix=keys.shard_prefix(s),
                events_maxlen=self.events_maxlen,
                limit=limit,
            )
            for s in range(keys.SHARDS)
        ]
        return sum(int(n) for n in await self.scripts.run_many(calls))

    # --- policies ---------------------------------------------------------------------------------
    async def apply_policy(
        self, policy: Policy, *, inline_entry: str = "", not_before: float = 0.0
    ) -> Literal["stale", "unchanged", "written"]:
        """Write the policy's parameters: for `engine/registry.py`, the one writer of them.
        An inline queue's entry and first release (engine/inline.py) go in the same call."""
        pkey = policy.key
        shard = keys.shard_of(pkey)
        result = await self.scripts.run(
            Scripts.apply_policy(
                keys.params(pkey),
                keys.queues(pkey),
                keys.due(shard),
                keys.awaiting_params(shard),
                keys.inline_queues(shard),
                now_offset_ms=self.time_offset_ms,
                prefix=keys.shard_prefix(shard),
                policy=pkey,
                revision=policy.revision,
                content_hash=policy.content_hash,
                entry=inline_entry,
                not_before_us=round(not_before * 1_000_000),
                fields=redis_fields(policy, time.time()),
            )
        )
        outcomes: tuple[Literal["stale", "unchanged", "written"], ...] = (
            "stale",
            "unchanged",
            "written",
        )
        return outcomes[int(result)]

    async def remove_policy(self, policy: Policy, mode: RetireMode = "Drain") -> int:
        """Retire a policy; returns what is still queued or in flight (0 = all keys deleted)."""
        pkey = policy.key
        shard = keys.shard_of(pkey)
        remaining = await self.scripts.run(
            Scripts.retire(
                keys.params(pkey),
                keys.queues(pkey),
                keys.due(shard),
                keys.meta(pkey),
                keys.done(pkey),
                keys.stats(pkey),
                keys.awaiting_params(shard),
                now_offset_ms=self.time_offset_ms,
                prefix=keys.shard_prefix(shard),
                policy=pkey,
                mode=mode,
            )
        )
        return int(remaining)

    async def awaiting_params(self) -> set[str]:
        """Policies (`portal:name`) whose queues hold executions that arrived while Redis had no
        parameters for them, or older ones than the webhook's copy (enqueue.lua marks them;
        writing the parameters clears the mark). One pipelined read of every shard."""
        async with self.redis.pipeline(transaction=False) as pipe:
            for shard in range(keys.SHARDS):
                pipe.smembers(keys.awaiting_params(shard))
            found = await pipe.execute()
        return {_text(key) for members in found for key in members}

    async def stats(self, policy: Policy) -> PolicyStats:
        return (await self.stats_many([policy]))[0]

    async def stats_many(
        self, policies: Sequence[Policy], chunk: int = 250, per_queue: bool = False
    ) -> list[PolicyStats]:
        """Figures of many policies: one `stats` call per shard and `chunk` policies, all in one
        round trip (a pipeline; per node on a Cluster). `per_queue`: also each queue's daily
        count, for the policies with a daily cap."""
        by_shard: dict[int, list[int]] = defaultdict(list)
        for i, p in enumerate(policies):
            by_shard[keys.shard_of(p.key)].append(i)
        order: list[int] = []
        calls: list[ScriptCall] = []
        for shard, indexes in sorted(by_shard.items()):
            for start in range(0, len(indexes), chunk):
                part = indexes[start : start + chunk]
                part_policies = [policies[i] for i in part]
                calls.append(
                    Scripts.stats(
                        [
                            (keys.queues(p.key), keys.meta(p.key), keys.stats(p.key))
                            for p in part_policies
                        ],
                        now_offset_ms=self.time_offset_ms,
                        prefix=keys.shard_prefix(shard),
                        policies=[
                            (p.key, per_queue and p.daily_cap is not None) for p in part_policies
                        ],
                    )
                )
                order += part
        out: list[PolicyStats | None] = [None] * len(policies)
        answers = await self.scripts.run_many(calls) if calls else []
        found = (figures for answer in answers for figures in answer)
        for i, raw in zip(order, found, strict=True):
            out[i] = _policy_stats(raw)
        return [s for s in out if s is not None]

    async def redis_time(self) -> float:
        """Redis' clock plus the test offset, as the scripts see it (epoch seconds)."""
        shift = self.time_offset_ms
        if isinstance(shift, str):
            return int(shift.removeprefix("@")) / 1e6
        seconds, micros = await self.redis.time()
        return float(seconds) + float(micros) / 1e6 + shift / 1000


def _policy_stats(raw: Sequence[Any]) -> PolicyStats:
    now_us, depth, oldest_us, queues = int(raw[0]), int(raw[1]), int(raw[2]), int(raw[3])
    pairs, days = raw[4], raw[5]
    counters = {_text(pairs[i]): int(pairs[i + 1]) for i in range(0, len(pairs) - 1, 2)}
    last = counters.get("last_release_us")
    return PolicyStats(
        depth=depth,
        in_flight=max(0, counters.get("inflight", 0)),
        oldest_age_seconds=max(0.0, (now_us - oldest_us) / 1e6) if oldest_us else 0.0,
        queues=queues,
        received=counters.get("received", 0),
        released=counters.get("released", 0),
        acked=counters.get("acked", 0),
        failed=counters.get("failed", 0),
        expired=counters.get("expired", 0),
        requeued=counters.get("requeued", 0),
        last_release_at=last / 1e6 if last else None,
        queue_days=tuple(
            (int(days[i]), int(days[i + 1]), int(days[i + 2])) for i in range(0, len(days), 3)
        ),
    )


def _by_shard(items: Iterable[Released]) -> dict[int, list[Released]]:
    grouped: dict[int, list[Released]] = defaultdict(list)
    for r in items:
        grouped[keys.shard_of(r.policy_key)].append(r)
    return grouped


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
