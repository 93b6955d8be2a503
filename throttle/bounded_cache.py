"""The bound of every in-process cache the runtime keeps: a plain dict, stored into by `put`.

Each cache is keyed by what requests bring (a path, a portal, a policy), so a stream of new keys
must not grow it without end. When a new key finds the dict full, the oldest quarter of its
entries goes (in the order they were stored). Why this shape:
- plain dicts, read with their own `get`: the caches sit on the webhook's hot path, and CPython
  3.11 specialises lookups on an exact dict only; a dict subclass or a wrapper object costs
  ~10 ns more per hit (bench/RESULTS.md, caches);
- oldest first rather than clearing: one new key does not turn every key into a miss at once,
  and an entry still in use that went comes back on its next miss;
- a quarter at a time: a dict forgets its first entry in time proportional to the entries
  forgotten before it (until it compacts), so one eviction per new key costs ~50 µs per key at
  50,000 entries; a quarter at once costs ~0.2 µs per key at any size.

Every cache that uses it is justified by a measurement: bench/caches.py.
"""

from __future__ import annotations

from itertools import islice
from typing import TypeVar

K = TypeVar("K")
V = TypeVar("V")


def put(cache: dict[K, V], key: K, value: V, max_entries: int) -> V:
    """Store `value` under `key` (first making room if `cache` holds `max_entries`); return it."""
    if len(cache) >= max_entries and key not in cache:
        for old in list(islice(cache, max(1, max_entries // 4))):
            del cache[old]
    cache[key] = value
    return value
