"""The bound of the runtime's caches: never more than the limit, the oldest go first."""

from __future__ import annotations

from throttle import bounded_cache


def test_a_full_cache_drops_its_oldest_quarter_for_a_new_key() -> None:
    cache: dict[int, str] = {}
    for key in range(8):
        assert bounded_cache.put(cache, key, str(key), 8) == str(key)
    assert bounded_cache.put(cache, 8, "8", 8) == "8"
    assert list(cache) == [2, 3, 4, 5, 6, 7, 8]


def test_a_known_key_is_replaced_without_evicting() -> None:
    cache = {key: key for key in range(4)}
    bounded_cache.put(cache, 0, 10, 4)
    assert cache == {0: 10, 1: 1, 2: 2, 3: 3}


def test_it_never_holds_more_than_the_limit() -> None:
    cache: dict[int, int] = {}
    for key in range(1_000):
        bounded_cache.put(cache, key, key, 3)
        assert len(cache) <= 3
    assert 999 in cache
