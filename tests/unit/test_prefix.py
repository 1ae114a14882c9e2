"""The prefix cache's bookkeeping over fake rows (lists of token ids): which row
it picks, what it copies, what it keeps and what it drops."""

from __future__ import annotations

import numpy as np

from tiger_grpc.engine.prefix import PrefixCache, Row


class Rows:
    """Fake KV rows: each holds the token ids it has the KV of."""

    def __init__(self, count: int) -> None:
        self.rows: list[list[int]] = [[] for _ in range(count)]
        self.copies: list[tuple[int, int]] = []

    def copy(self, src: int, dst: int, length: int) -> None:
        self.rows[dst] = list(self.rows[src][:length])
        self.copies.append((src, dst))

    def cache(self, **kw) -> PrefixCache:
        return PrefixCache(len(self.rows), self.copy, min_copy=4, **kw)


def finish(rows: Rows, cache: PrefixCache, slot: int, ids: list[int], salt="") -> None:
    """A sequence that held `ids` in row `slot` ends, its row staying as it is."""
    rows.rows[slot] = list(ids)
    cache.keep(slot, ids, salt, floor=slot + 1, in_place=True)


def consistent(rows: Rows, cache: PrefixCache) -> None:
    for slot, entry in cache.entries.items():
        assert rows.rows[slot][: len(entry.tokens)] == list(entry.tokens)


def test_the_longest_prefix_wins_in_place_and_the_last_tokens_are_computed():
    rows = Rows(4)
    cache = rows.cache()
    finish(rows, cache, 0, [1, 2, 3, 4, 5, 6])
    assert cache.claim(0, [1, 2, 3, 4, 5, 6], "", ()) == 4  # not the last two
    assert rows.copies == [] and 0 not in cache.entries  # the row is the new one's
    assert (cache.hits, cache.hit_tokens, cache.lookups) == (1, 4, 1)


def test_a_hit_elsewhere_is_copied_but_a_short_one_is_not():
    rows = Rows(4)
    cache = rows.cache()
    finish(rows, cache, 2, [1, 2, 3, 4, 5, 6, 7])
    assert cache.claim(0, [1, 2, 3, 4, 5, 9, 9], "", ()) == 5
    assert rows.copies == [(2, 0)] and rows.rows[0][:5] == [1, 2, 3, 4, 5]
    assert 2 in cache.entries  # the source stays kept
    assert cache.claim(1, [1, 2, 3, 8], "", ()) == 0  # 3 tokens: under min_copy
    consistent(rows, cache)


def test_a_running_row_serves_as_a_source():
    rows = Rows(3)
    cache = rows.cache()
    rows.rows[0] = [5, 6, 7, 8, 9, 10]
    running = [Row(0, np.array(rows.rows[0]), "")]
    assert cache.claim(1, [5, 6, 7, 8, 9, 11, 12], "", running) == 5
    assert rows.copies == [(0, 1)]


def test_salts_never_share():
    rows = Rows(3)
    cache = rows.cache()
    finish(rows, cache, 0, [1, 2, 3, 4, 5, 6], salt="a")
    assert cache.claim(0, [1, 2, 3, 4, 5, 6], "b", ()) == 0
    assert cache.entries[1].salt == "a"  # moved aside, not lost
    consistent(rows, cache)


def test_the_row_a_sequence_needs_is_vacated_least_recently_used_first():
    rows = Rows(3)
    cache = rows.cache()
    finish(rows, cache, 2, [1, 1, 1, 1, 1])  # oldest
    finish(rows, cache, 1, [2, 2, 2, 2, 2])
    finish(rows, cache, 0, [3, 3, 3, 3, 3])  # newest, in the row needed
    assert cache.claim(0, [4, 4, 4, 4, 4], "", ()) == 0
    # The newest entry moved over the oldest one.
    assert {tuple(e.tokens) for e in cache.entries.values()} == {
        (2, 2, 2, 2, 2),
        (3, 3, 3, 3, 3),
    }
    assert 0 not in cache.entries
    consistent(rows, cache)


def test_a_partial_hit_in_place_keeps_the_rest_elsewhere_when_it_is_long():
    rows = Rows(3)
    cache = rows.cache()
    finish(rows, cache, 0, [1, 2, 3, 4, 5, 6, 7, 8, 9])
    assert cache.claim(0, [1, 2, 3, 4, 5, 0, 0], "", ()) == 5
    assert rows.copies == [(0, 1)] and list(cache.entries[1].tokens)[-1] == 9
    # A few tokens of its own (a regenerated answer): not worth a copy.
    finish(rows, cache, 0, [2, 3, 4, 5, 6, 7, 8])
    assert cache.claim(0, [2, 3, 4, 5, 6, 0, 0], "", ()) == 5
    assert len(rows.copies) == 1 and list(cache.entries) == [1]


def test_a_newer_turn_replaces_the_entry_it_extends():
    rows = Rows(4)
    cache = rows.cache()
    finish(rows, cache, 1, [1, 2, 3])
    finish(rows, cache, 0, [1, 2, 3, 4, 5])
    assert list(cache.entries) == [0]
    finish(rows, cache, 2, [1, 2, 3])  # already held by a longer entry
    assert list(cache.entries) == [0]


def test_an_ended_sequence_is_copied_to_a_spare_row_or_not_kept():
    rows = Rows(3)
    cache = rows.cache()
    rows.rows[0] = [7, 7, 7, 7]
    cache.keep(0, [7, 7, 7, 7], "", floor=1, in_place=False)
    assert rows.copies == [(0, 1)] and list(cache.entries) == [1]
    rows.rows[0] = [8, 8, 8, 8]
    cache.keep(0, [8, 8, 8, 8], "", floor=3, in_place=False)  # no free row
    assert list(cache.entries) == [1]


def test_off_it_keeps_and_reuses_nothing():
    rows = Rows(3)
    cache = rows.cache(enabled=False)
    finish(rows, cache, 0, [1, 2, 3, 4, 5, 6])
    assert cache.claim(0, [1, 2, 3, 4, 5, 6], "", ()) == 0
    assert cache.entries == {} and cache.stats().lookups == 0
