"""Release timestamps from the engine's own history streams, as Redis' clock recorded them.

Every `take` appends one `rel` event (policy, Redis time, the callback ids it released) and every
`enqueue` a `recv` event to its shard's stream; history writers copy them to PostgreSQL but the
stream keeps them (bounded by `events_maxlen`). Reading them back gives exact release instants
with no sampling and no clock skew between dispatchers, which is what a rate should be judged on.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

from throttle import keys


@dataclass
class ReleaseLog:
    """Per policy key (`portal:name`): release instants, and (received, released) per callback."""

    releases: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    waits: dict[str, list[tuple[float, float]]] = field(default_factory=lambda: defaultdict(list))
    received: int = 0

    def times(self, policy_key: str) -> list[float]:
        return sorted(self.releases.get(policy_key, []))


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


async def read_release_log(redis: Any, batch: int = 5000) -> ReleaseLog:
    """Scan every shard's event stream once (XRANGE in pages; read-only)."""
    log = ReleaseLog()
    received_at: dict[str, float] = {}
    for shard in range(keys.SHARDS):
        stream = keys.events(shard)
        start = "-"
        while True:
            entries = await redis.xrange(stream, min=start, max="+", count=batch)
            if not entries:
                break
            for _entry_id, raw in entries:
                fields = {_text(k): _text(v) for k, v in raw.items()}
                kind = fields.get("t")
                ts = int(fields.get("ts", "0")) / 1e6
                if kind == "recv":
                    received_at[fields.get("cb", "")] = ts
                    log.received += 1
                elif kind == "rel":
                    pol = fields.get("pol", "")
                    for cb in filter(None, fields.get("cbs", "").split(",")):
                        log.releases[pol].append(ts)
                        if cb in received_at:
                            log.waits[pol].append((received_at[cb], ts))
            last = _text(entries[-1][0])
            start = "(" + last
            if len(entries) < batch:
                break
    return log
