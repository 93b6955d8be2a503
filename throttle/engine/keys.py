"""Every Redis key Throttle uses, in one place.

Layout. A policy (`portal:name`) lives in one of `SHARDS` shards, chosen by a stable hash of its
identity; every key of the policy and of its queues carries the shard's hash tag `{tN}`, so a
script touching a policy, its queues, the shard's due schedule, its lease index and its history
stream works unchanged on Redis Cluster (one slot). The due schedule is therefore sharded too: no
single key is hot, and a dispatcher drains one shard per script call.

    throttle:{tN}:due                       zset  queue ref -> due time (ms)
    throttle:{tN}:leases                    zset  "ref|callbackId" -> lease deadline (ms)
                                                  (the attempt, meta's, is the holder's fencing
                                                  token: take raises it on every release)
    throttle:{tN}:events                    stream history events (received, released, ...)
    throttle:{tN}:evdropped                 int   events dropped because the stream was full
    throttle:{tN}:prioritized               set   queue refs that held executions with a priority
                                                  (reap.lua puts any of them with executions but
                                                  no due time back on the schedule: release
                                                  0.1.0's take reads only the list and unschedules
                                                  a queue whose list is empty)
    throttle:{tN}:awaiting                  set   policies (`portal:name`) whose queues took
                                                  executions while Redis held no parameters for
                                                  them, or older ones (for the reconcilers)
    throttle:{tN}:inline                    hash  inline queue policy key -> JSON {spec, note,
                                                  notBefore} (engine/inline.py; written with the
                                                  queue's parameters, in one script call)
    throttle:{tN}:p:<portal>:<name>:params  hash  rate parameters (policy_encoding.redis_fields)
    throttle:{tN}:p:<portal>:<name>:queues  set   queue ids of the policy ("shared", "wf<id>")
    throttle:{tN}:p:<portal>:<name>:meta    hash  callbackId -> "seq,enq_us,exp_us,attempts,qid"
                                                  plus "/p<tag>" when the execution carried a
                                                  priority (engine/priority.py `Priority.tag`;
                                                  release 0.1.0 reads it as part of the qid and
                                                  writes it back unchanged)
    throttle:{tN}:p:<portal>:<name>:done    zset  callbackId -> forget-after ms (dedupe when done)
    throttle:{tN}:p:<portal>:<name>:stats   hash  counters (received, released, acked, ...)
    throttle:{tN}:q:<portal>:<name>:<qid>:list   list  callback ids, head = next to release
    throttle:{tN}:q:<portal>:<name>:<qid>:state  hash  GCRA state, daily-cap count, hold-until, seq
    throttle:{tN}:q:<portal>:<name>:<qid>:pq     zset  callback ids of priority 1-9 -> score
                                                  (arrival us - priority x step, priority.py);
                                                  take merges it with the list (priority 0)

A queue ref is `<portal>:<name>:<qid>`. The scripts that visit many queues of a shard (take, ack,
reap) build the per-policy and per-queue keys from the shard prefix and the ref with exactly the
suffixes above (`test_lua_builds_the_same_keys_as_keys_py` in tests/engine/test_queue.py checks
that they agree with these builders).

The policy registry (what PolicyIndex loads) is global and small: `throttle:{reg}:policies`
(hash `portal:name` -> JSON) and `throttle:{reg}:rev` (bumped on every change).

The layout's version lives in `throttle:{reg}:layout` (`LAYOUT`): a change to any key or value
format here is a new layout with a migration (throttle/engine/layout.py, docs/upgrading.md).

`SHARDS` is part of the data layout: changing it moves policies to other shards, so it is a
constant, not a setting.
"""

from __future__ import annotations

import zlib

PREFIX = "throttle"
SHARDS = 32


def shard_of(policy_key: str) -> int:
    """The shard of a policy identity `portal:name` (stable across processes and versions)."""
    return zlib.crc32(policy_key.encode()) % SHARDS


def shard_prefix(shard: int) -> str:
    return f"{PREFIX}:{{t{shard}}}:"


def policy_key(portal_id: int, name: str) -> str:
    """`portal:name`, a policy's identity: in every key of the policy, the registry, history."""
    return f"{portal_id}:{name}"


def split_policy_key(policy_key_: str) -> tuple[int, str]:
    """(portal, name) of a `portal:name`."""
    portal, _, name = policy_key_.partition(":")
    return int(portal), name


def queue_ref(policy_key_: str, queue_id: str) -> str:
    """`portal:name:qid`, one queue of a policy (the due schedule's and the leases' members)."""
    return f"{policy_key_}:{queue_id}"


# --- per shard ------------------------------------------------------------------------------------
def due(shard: int) -> str:
    return shard_prefix(shard) + "due"


def leases(shard: int) -> str:
    return shard_prefix(shard) + "leases"


def events(shard: int) -> str:
    return shard_prefix(shard) + "events"


def events_dropped(shard: int) -> str:
    return shard_prefix(shard) + "evdropped"


def awaiting_params(shard: int) -> str:
    return shard_prefix(shard) + "awaiting"


def inline_queues(shard: int) -> str:
    """The shard's inline queues (policies named `inline.…`), by policy key: their entries."""
    return shard_prefix(shard) + "inline"


def prioritized(shard: int) -> str:
    return shard_prefix(shard) + "prioritized"


# --- per policy -----------------------------------------------------------------------------------
def _policy(pkey: str, suffix: str) -> str:
    return f"{shard_prefix(shard_of(pkey))}p:{pkey}:{suffix}"


def params(pkey: str) -> str:
    return _policy(pkey, "params")


def queues(pkey: str) -> str:
    return _policy(pkey, "queues")


def meta(pkey: str) -> str:
    return _policy(pkey, "meta")


def done(pkey: str) -> str:
    return _policy(pkey, "done")


def stats(pkey: str) -> str:
    return _policy(pkey, "stats")


# --- per queue ------------------------------------------------------------------------------------
def queue_list(pkey: str, qid: str) -> str:
    return f"{shard_prefix(shard_of(pkey))}q:{pkey}:{qid}:list"


def queue_state(pkey: str, qid: str) -> str:
    return f"{shard_prefix(shard_of(pkey))}q:{pkey}:{qid}:state"


def queue_priority(pkey: str, qid: str) -> str:
    return f"{shard_prefix(shard_of(pkey))}q:{pkey}:{qid}:pq"


# --- global ---------------------------------------------------------------------------------------
REGISTRY = f"{PREFIX}:{{reg}}:policies"
REGISTRY_REV = f"{PREFIX}:{{reg}}:rev"
REAPER_LOCK = f"{PREFIX}:{{reg}}:reaper"
HISTORY_GROUP = "history"
INSTALLED_PORTALS = f"{PREFIX}:{{reg}}:installed"
"""JSON {installed: [...], stopped: {portal: reason}}: the webhook's mirror of hubspot_portals."""
LAYOUT = f"{PREFIX}:{{reg}}:layout"
"""hash {version, readable_by, migrated_at, migrated_by, summary}: the data layout every key here
follows (throttle/engine/layout.py); absent = layout 1, release 0.1.0's."""
LAYOUT_LOCK = f"{PREFIX}:{{reg}}:layout-lock"
"""Held by the one pod migrating the layout."""
HUBSPOT_CONFIG_FAULT = f"{PREFIX}:{{reg}}:hubspot-config-fault"
"""JSON of the latest configuration fault HubSpot's token endpoint answered, no secret in it
(throttle/hubspot/config_fault.py); it expires unless met again, and the next success deletes it."""


# --- HubSpot (per portal; all keys of a portal share the tag {hs<portal>}) ------------------------
#     throttle:{hs<portal>}:budget      zset   the portal's API calls in the rolling window (ms)
#     throttle:{hs<portal>}:hold        string set after a 429; its TTL is the wait
#     throttle:{hs<portal>}:inflight    zset   the portal's calls in flight (lease end, ms)
#     throttle:{hs<portal>}:token-lock  string the single-flight token refresh lock
#     throttle:oauth-state:<nonce>      string an OAuth `state` already used (single use)
def _hubspot(portal_id: int, suffix: str) -> str:
    return f"{PREFIX}:{{hs{portal_id}}}:{suffix}"


def hubspot_budget(portal_id: int) -> str:
    return _hubspot(portal_id, "budget")


def hubspot_hold(portal_id: int) -> str:
    return _hubspot(portal_id, "hold")


def hubspot_in_flight(portal_id: int) -> str:
    return _hubspot(portal_id, "inflight")


def hubspot_token_lock(portal_id: int) -> str:
    return _hubspot(portal_id, "token-lock")


def oauth_state_used(nonce: str) -> str:
    return f"{PREFIX}:oauth-state:{nonce}"
