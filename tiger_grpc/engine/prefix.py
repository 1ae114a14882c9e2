"""Automatic prefix caching over the fused model's slotted KV cache.

The cache has one row (slot) per sequence: the running batch holds rows [0, n),
the prompt being written the next one. The other rows are free, and here they keep
the KV of the prompts of sequences that ended, keyed by their token ids and the
request's cache salt. A new sequence whose prompt starts the same way reuses the
longest such prefix (from a kept row, or from a running sequence's row: one
system prompt in several chats at once, or the other choices of a request) and is
written from where it ends.

Reuse is exact: the answer is the one the request gets without the cache, token
for token. Only what a prefill wrote is shared (decode steps compute a token's KV
along another path: the tokens a sequence generated are not shared, and a chat's
next turn writes the previous answer again), and the last two prompt tokens are
always computed (`RECOMPUTE`). A hit in the very row the new sequence gets costs
nothing; elsewhere it costs a device-side copy of the shared positions, which is
why a short hit elsewhere is not taken.

Kept rows never keep a request out: the row a new sequence needs is vacated first
(its entry moved to an empty row, or the least recently used entry dropped), and
they live only in rows no sequence uses. An entry that a newer one extends (the
previous turn of the same chat) is dropped. Matching is exact on token ids within
one salt; a cache belongs to one model (one graph, one precision; a trained
adapter is a model of its own), so nothing is shared across them. Without a salt,
a request can tell (from `cached_tokens`, or from its timing) how much of its
prompt others sent recently: tenants who must not learn that need salts of their
own.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np

# A hit outside the new sequence's own row costs a row copy: below this many
# tokens, computing them again is as cheap.
MIN_COPY_TOKENS = 16
# Prompt tokens always computed, even when all are cached: the last one's logits
# give the first token, and two rather than one keep the answer bit for bit what
# it is without the cache (ORT's int4 matmul takes another path for a single row:
# its logits differed by up to 0.5; any two rows or more give the same results).
RECOMPUTE = 2


def common_prefix(a: np.ndarray, b: np.ndarray) -> int:
    """How many leading token ids `a` and `b` share."""
    k = min(len(a), len(b))
    differ = np.flatnonzero(a[:k] != b[:k])
    return int(differ[0]) if differ.size else k


def token_array(tokens: Iterable[int]) -> np.ndarray:
    return np.fromiter(tokens, dtype=np.int64)


@dataclass(frozen=True)
class CacheStats:
    """What the prefix cache did and holds (the metrics read it)."""

    lookups: int = 0  # new sequences that looked for a prefix
    hits: int = 0  # those that found one
    hit_tokens: int = 0  # prompt tokens not computed again
    tokens: int = 0  # tokens whose KV the free rows keep now
    rows: int = 0  # rows keeping them


@dataclass
class Entry:
    """A free row's contents: the KV of `tokens`, under `salt`."""

    tokens: np.ndarray
    salt: str
    used: int  # when it was last kept or hit (larger: more recent)


@dataclass(frozen=True)
class Row:
    """A row in use by a sequence, as a source of shared prefixes."""

    slot: int
    tokens: np.ndarray  # the tokens the row holds the KV of
    salt: str


class PrefixCache:
    """Which free rows hold which tokens, and the moves that keep them.

    `copy(src, dst, length)` copies the first `length` positions of a row's KV to
    another row, on the device. Rows from
    `floor` up (an argument of each call) are the ones no sequence uses.
    """

    def __init__(
        self,
        slots: int,
        copy: Callable[[int, int, int], None],
        enabled: bool = True,
        min_copy: int = MIN_COPY_TOKENS,
    ) -> None:
        self.slots, self.enabled, self.min_copy = slots, enabled, min_copy
        self._copy = copy
        self.entries: dict[int, Entry] = {}
        self._clock = itertools.count(1)
        self.lookups = self.hits = self.hit_tokens = 0

    def stats(self) -> CacheStats:
        """A snapshot (safe to take from another thread)."""
        entries = dict(self.entries)  # one step under the GIL
        return CacheStats(
            self.lookups,
            self.hits,
            self.hit_tokens,
            sum(len(e.tokens) for e in entries.values()),
            len(entries),
        )

    def lengths(self) -> dict[int, int]:
        """Each kept row and how many positions of it matter."""
        return {slot: len(e.tokens) for slot, e in self.entries.items()}

    def clear(self) -> None:
        self.entries.clear()

    def claim(
        self, slot: int, prompt: list[int], salt: str, running: Iterable[Row]
    ) -> int:
        """Readies row `slot` (the rows above it are free) for a new sequence of
        `prompt`: returns how many of its leading tokens the row now holds."""
        if not self.enabled:
            self.entries.pop(slot, None)
            return 0
        self.lookups += 1
        wanted = token_array(prompt)
        source, length = self._best(slot, wanted, salt, running)
        if length == 0:
            self._vacate(slot, floor=slot + 1)
            return 0
        if source != slot:
            self._vacate(slot, floor=slot + 1, keep=source)
            self._copy(source, slot, length)
            if source in self.entries:
                self.entries[source].used = next(self._clock)
        elif self._worth_keeping(self.entries[slot].tokens, wanted):
            # The row keeps serving the shared part; the entry, whose own part
            # is long, is kept elsewhere too, when there is room for it.
            self._vacate(slot, floor=slot + 1, touch=True)
        else:
            del self.entries[slot]  # the row is the new sequence's
        self.hits += 1
        self.hit_tokens += length
        return length

    def vacate(self, slot: int) -> None:
        """Readies row `slot` (the rows above it are free) for a sequence that
        reuses nothing."""
        self._vacate(slot, floor=slot + 1)

    def keep(
        self, slot: int, tokens: list[int], salt: str, floor: int, in_place: bool
    ) -> None:
        """Keeps the KV of a sequence that ended in row `slot` (it holds `tokens`):
        in that row when nothing will write it (`in_place`), else copied to a free
        row (from `floor` up), when there is one to spare."""
        if not self.enabled or not tokens:
            return
        held = token_array(tokens)
        for other, entry in list(self.entries.items()):
            if entry.salt != salt:
                continue
            shared = common_prefix(entry.tokens, held)
            if shared == len(held):  # an entry already holds it
                entry.used = next(self._clock)
                return
            if shared == len(entry.tokens):  # this one extends it: drop it
                del self.entries[other]
        if not in_place:
            target = self._spare(floor, avoid=slot)
            if target is None:
                return
            self._copy(slot, target, len(held))
            slot = target
        self.entries[slot] = Entry(held, salt, next(self._clock))

    def _worth_keeping(self, held: np.ndarray, wanted: np.ndarray) -> bool:
        """Whether an entry that a new prompt shares only in part is worth a copy
        of its own: when what it holds beyond the shared part would cost more to
        compute again than copying it all costs now (a chat's regenerated answer
        differs in a few tokens; another chat on the same system prompt, in
        many)."""
        own = len(held) - common_prefix(held, wanted)
        return own >= max(self.min_copy, len(held) // 32)

    def _best(
        self, slot: int, wanted: np.ndarray, salt: str, running: Iterable[Row]
    ) -> tuple[int, int]:
        """The row sharing the longest prefix with `wanted` (at most all of it but
        its last `RECOMPUTE` tokens), preferring `slot` itself, then kept rows, on
        a tie."""
        limit = len(wanted) - RECOMPUTE
        best, best_length = slot, 0
        candidates = [Row(s, e.tokens, e.salt) for s, e in self.entries.items()]
        candidates.sort(key=lambda row: row.slot != slot)
        for row in [*candidates, *running]:
            if row.salt != salt:
                continue
            length = min(common_prefix(row.tokens, wanted), limit)
            if row.slot != slot and length < self.min_copy:
                continue  # not worth a copy: a shorter one in place may be
            if length > best_length:
                best, best_length = row.slot, length
        if best == slot and slot not in self.entries:
            return slot, 0
        return best, best_length

    def _vacate(
        self, slot: int, floor: int, keep: int | None = None, touch: bool = False
    ) -> None:
        """Frees row `slot` for a sequence, keeping its entry (if any) elsewhere:
        in an empty row, else over the least recently used entry (never over
        `keep`, a row about to be read); `touch`: the entry was just used."""
        entry = self.entries.pop(slot, None)
        if entry is None:
            return
        if touch:
            entry.used = next(self._clock)
        target = self._spare(floor, avoid=keep, older_than=entry.used)
        if target is not None:
            self._copy(slot, target, len(entry.tokens))
            self.entries[target] = entry

    def _spare(
        self, floor: int, avoid: int | None = None, older_than: int | None = None
    ) -> int | None:
        """A free row from `floor` up to write an entry to: an empty one, else
        the least recently used entry's (dropped), if older than `older_than`."""
        free = [r for r in range(floor, self.slots) if r != avoid]
        empty = [r for r in free if r not in self.entries]
        if empty:
            return empty[0]
        kept = [r for r in free if r in self.entries]
        if not kept:
            return None
        victim = min(kept, key=lambda r: self.entries[r].used)
        if older_than is not None and self.entries[victim].used > older_than:
            return None
        del self.entries[victim]
        return victim
