"""What each in-process cache of the runtime saves: the cost of one call with the cache (a hit,
the common case) against the cost of computing the answer every time, in one process.

Every cache is a dict bounded by `throttle.bounded_cache.put`; a cache whose "with" is not
clearly below its "without" does not pay for itself and should go. The last lines: what the
bound costs per new key once a cache is full.

`.venv/bin/python bench/caches.py [--number 200000] [--repeat 7]`; `--with-only` times only the
cached calls, whose names are the same in earlier versions (an A/B against another checkout:
`PYTHONPATH=<checkout> .venv/bin/python bench/caches.py --with-only`).
"""

from __future__ import annotations

import argparse
import time
import timeit
from collections.abc import Callable
from typing import Any

from aiohttp.test_utils import make_mocked_request
from redis.asyncio import Redis

from throttle.engine.policy import Policy
from throttle.engine.policy_index import PolicyIndex
from throttle.engine.queue import Queue
from throttle.settings import Settings
from throttle.webhook_service import actions, verification

Case = tuple[str, Callable[[], Any] | None, Callable[[], Any]]
"""(what, without the cache or None, with the cache)."""

PLAIN = {"name": "plain", "portalId": 7, "rate": {"limit": 100, "period": "1m"}}
CAPPED = {
    **PLAIN,
    "name": "capped",
    "rate": {"limit": 200, "period": "1m"},
    "dailyCap": {"limit": 5000, "timeZone": "America/New_York"},
}
WINDOWED = {
    **PLAIN,
    "name": "windowed",
    "schedule": {
        "timeZone": "Europe/Berlin",
        "windows": [
            {"days": ["Mon", "Tue", "Wed", "Thu", "Fri"], "start": "09:00", "end": "17:00"}
        ],
    },
}


def policy(spec: dict[str, Any], **changes: Any) -> Policy:
    return Policy.model_validate({**spec, **changes})


def eviction_us(max_entries: int, keys: int = 200_000) -> float:
    """Per new key, with the cache full: what the bound costs when keys keep coming."""
    from throttle import bounded_cache  # not in the checkouts --with-only reads

    cache: dict[int, int] = {}
    for key in range(max_entries):
        bounded_cache.put(cache, key, key, max_entries)
    started = time.perf_counter()
    for key in range(max_entries, max_entries + keys):
        bounded_cache.put(cache, key, key, max_entries)
    return (time.perf_counter() - started) / keys * 1e6


def webhook_cases(with_only: bool) -> list[Case]:
    own = policy(PLAIN)
    answers = actions.BlockAnswers()
    index = PolicyIndex.from_policies(
        [own, policy(PLAIN, name="default", portalId=0)],
    )
    index.revision = 1
    resolver = actions.PolicyResolver(index)
    settings = Settings(public_url="https://throttle.example.com/hooks")
    verifier = verification.SignatureVerifier(settings)
    request = make_mocked_request("POST", "/api/hubspot/action?x=1")
    without = not with_only
    return [
        (
            "BLOCK answer body (BlockAnswers)",
            (lambda: actions.json.dumps(actions.block(own)).encode()) if without else None,
            lambda: answers.body(own),
        ),
        (
            "policy: the portal's own (PolicyResolver)",
            (lambda: index.resolve(7, 1, "plain")) if without else None,
            lambda: resolver.resolve(7, 1, "plain"),
        ),
        (
            "policy: the global default (PolicyResolver)",
            (lambda: index.resolve(8, 1, None)) if without else None,
            lambda: resolver.resolve(8, 1, None),
        ),
        (
            "called URL (SignatureVerifier.url)",
            (
                lambda: verification.called_url(
                    request, settings.public_url, settings.trusted_proxy_networks
                )
            )
            if without
            else None,
            lambda: verifier.url(request),
        ),
    ]


def queue_cases(with_only: bool) -> list[Case]:
    queue = Queue(Redis())  # never connects: only the Python side of enqueue is timed
    cases: list[Case] = []
    own = policy(PLAIN)
    build = None
    if not with_only:
        from throttle.engine.queue import _EnqueueTarget

        build = _EnqueueTarget.build
    cases.append(
        (
            "enqueue keys (Queue._targets)",
            (lambda: build(own, "shared")) if build else None,
            lambda: queue._target(own, "shared"),
        )
    )
    for spec in (PLAIN, CAPPED, WINDOWED):
        p = policy(spec, overflow="Fail", expiration="P7D")
        cases.append(
            (
                f"queue capacity, {spec['name']}, 7 days (Queue._capacity)",
                (lambda p=p: p.capacity_within(time.time())) if not with_only else None,
                lambda p=p: queue._max_depth(p),
            )
        )
    return cases


def per_call_us(fn: Callable[[], Any], number: int, repeat: int) -> float:
    fn()  # warm: the first call fills the cache
    return min(timeit.repeat(fn, number=number, repeat=repeat)) / number * 1e6


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--number", type=int, default=200_000)
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--with-only", action="store_true")
    args = parser.parse_args()
    cases = webhook_cases(args.with_only) + queue_cases(args.with_only)
    print("| call | without µs | with µs | saved µs |")
    print("| --- | ---: | ---: | ---: |")
    for name, without, with_cache in cases:
        cached = per_call_us(with_cache, args.number, args.repeat)
        if without is None:
            print(f"| {name} | - | {cached:.3f} | - |")
            continue
        # The computation can be slow (a calendar walk): fewer calls, same precision.
        plain = per_call_us(without, max(1, args.number // 20), args.repeat)
        print(f"| {name} | {plain:.3f} | {cached:.3f} | {plain - cached:.3f} |")
    if not args.with_only:
        for size in (256, 10_000, 50_000):
            print(f"bounded_cache.put, new key into a full {size:,}: {eviction_us(size):.2f} µs")


if __name__ == "__main__":
    main()
