"""The scheduler: continuous batching over the fused graph, one decode step for
every running sequence.

The loop alternates between prefilling one waiting sequence (into the next free
slot, at most `prefill_chunk` prompt tokens per turn) and one batched decode step for
all running sequences. So a new request joins the batch once its prompt is in,
without waiting for the others to finish; a long prompt does not stall the running
streams for its whole length; a finished or cancelled sequence leaves at once (the
last slot moves into its place), its KV kept in a free slot for the requests that
start the same way (`prefix`). Admission is bounded: past `max_running +
max_queued` sequences, `submit` refuses.
"""

from __future__ import annotations

import collections
import logging
import threading

from ..api.errors import InvalidArgumentError, OverloadedError
from ..api.events import Failure
from .fused import FusedCausalLM
from .grammar import MaskFiller
from .prefix import CacheStats, PrefixCache, Row, token_array
from .sequence import Outbox, Sequence

log = logging.getLogger(__name__)

PREFILL_CHUNK = 256  # prompt tokens written per loop turn


class BatchScheduler:
    """Owns a fused model's decode thread; `submit` and `cancel` are thread-safe."""

    def __init__(
        self,
        model: FusedCausalLM,
        name: str,
        max_queued: int = 64,
        prefill_chunk: int = PREFILL_CHUNK,
        prefix_cache: bool = True,
    ) -> None:
        self.model = model
        self.prefix = PrefixCache(model.max_batch, model.move, enabled=prefix_cache)
        self.max_running = model.max_batch
        self.max_queued = max_queued
        self.prefill_chunk = prefill_chunk
        self._waiting: collections.deque[Sequence] = collections.deque()
        self._running: list[Sequence] = []  # index == KV cache slot
        self._lengths: list[int] = []  # tokens in each slot's cache
        # The sequence whose prompt is being written, in slot len(_running), and how
        # many of its tokens are in (None: its slot is not readied yet).
        self._prefilling: Sequence | None = None
        self._prefilled: int | None = None
        self._wake = threading.Condition()
        self._closed = False
        self.tokens_generated = 0
        self.steps = 0
        self.prefill_chunks = 0
        self._out = Outbox()
        self._masks = MaskFiller(model.max_batch)
        self._thread = threading.Thread(
            target=self._loop, name=f"batch-{name}", daemon=True
        )
        self._thread.start()

    @property
    def running(self) -> int:
        return len(self._running) + (self._prefilling is not None)

    @property
    def queued(self) -> int:
        return len(self._waiting)

    def cache_stats(self) -> CacheStats:
        return self.prefix.stats()

    def submit(self, *sequences: Sequence) -> None:
        """Queues sequences (a request's choices: all of them, or none)."""
        with self._wake:
            if self._closed:
                raise RuntimeError("scheduler is closed")
            room = self.max_running + self.max_queued
            if len(sequences) > room:
                raise InvalidArgumentError(
                    f"a request of {len(sequences)} sequences is more than this "
                    f"server holds at once ({room}); ask for fewer choices"
                )
            if self.queued + self.running + len(sequences) > room:
                raise OverloadedError(
                    f"the server is at capacity ({self.max_running} running, "
                    f"{self.max_queued} queued); retry shortly"
                )
            self._waiting.extend(sequences)
            self._wake.notify()

    def cancel(self, sequence: Sequence) -> None:
        with self._wake:
            sequence.cancelled = True
            if sequence in self._waiting:
                self._waiting.remove(sequence)
            self._wake.notify()

    def close(self) -> None:
        with self._wake:
            self._closed = True
            self._wake.notify()
        self._thread.join(timeout=30)

    def _loop(self) -> None:
        while True:
            with self._wake:
                self._wake.wait_for(
                    lambda: (
                        self._closed
                        or self._waiting
                        or self._running
                        or self._prefilling
                    )
                )
                if self._closed:
                    break
                if (
                    self._prefilling is None
                    and self._waiting
                    and len(self._running) < self.max_running
                ):
                    self._prefilling, self._prefilled = self._waiting.popleft(), None
            try:
                if self._prefilling is not None:
                    self._prefill_chunk()
                    self._out.flush()  # a first token goes out before the next step
                self._drop_finished()
                if self._running:
                    self._decode()
                    self._drop_finished()
            except Exception:
                log.exception("batched decode step failed")
                for sequence in self._all():
                    self._out.put(sequence, Failure("internal error while generating"))
                self._running.clear()
                self._lengths.clear()
                self._prefilling = None
                self.prefix.clear()  # what the rows hold is unknown now
            self._out.flush()
        for sequence in [*self._all(), *self._waiting]:
            self._out.put(sequence, Failure("the server is shutting down"))
        self._out.flush()
        self._masks.close()

    def _all(self) -> list[Sequence]:
        return [*self._running, *([self._prefilling] if self._prefilling else [])]

    def _prefill_chunk(self) -> None:
        """Writes the next chunk of the prefilling prompt; the last one moves the
        sequence into the running batch and samples its first token. A prompt to
        score moves in after its first token: the rest goes in a token per
        decode step, in the batch (its logits score each next token)."""
        s = self._prefilling
        assert s is not None
        slot = len(self._running)
        if s.done or (s.stopper.max_tokens == 0 and not s.score_prompt):
            if not s.done:  # nothing to generate nor score: no need to run it
                s.prompt_done(self._out)
            elif self._prefilled:  # cancelled half-way: what is in may serve again
                written = s.prompt_ids[: self._prefilled]
                self.prefix.keep(slot, written, s.salt, slot + 1, in_place=True)
            self._prefilling = None
            return
        if self._prefilled is None:
            self._prefilled = self._claim(slot, s)
        end = self._chunk_end(s)
        try:
            self._make_room(end)
            logits = self.model.prefill(slot, s.prompt_ids[:end], self._prefilled)
        except Exception:
            log.exception("prefill failed")
            self._out.put(s, Failure("internal error while generating"))
            self._prefilling = None
            self.prefix.clear()
            return
        self.prefill_chunks += 1
        self._prefilled = end
        if end < len(s.prompt_ids) and not s.score_prompt:
            return
        self._running.append(s)  # before the hand-over, so `running` never dips
        self._lengths.append(end)
        self._prefilling = None
        s.written = end
        if s.score_prompt:
            s.after_prompt_token(logits, self._out)
        elif not s.prompt_done(self._out):
            self.tokens_generated += 1
            s.step(logits, self._out)  # a finished one leaves at the drop

    def _chunk_end(self, s: Sequence) -> int:
        """Where the next chunk of the prompt ends. A prompt to score goes in a
        token at a time; any other never leaves a single token for a last chunk
        (that one joins this chunk): ORT's int4 matmul takes another path for one
        row, and the answer would depend on where the chunks fall."""
        assert self._prefilled is not None
        if s.score_prompt:
            return min(len(s.prompt_ids), self._prefilled + 1)
        end = min(len(s.prompt_ids), self._prefilled + self.prefill_chunk)
        return end + 1 if len(s.prompt_ids) - end == 1 else end

    def _claim(self, slot: int, s: Sequence) -> int:
        """Readies `slot` for `s`: how many prompt tokens it holds already (a
        prompt to score is written whole: each of its tokens needs its logits)."""
        if s.score_prompt:
            self.prefix.vacate(slot)
            return 0
        rows = (
            Row(i, token_array(self._shareable(i)), r.salt)
            for i, r in enumerate(self._running)
        )
        s.cached_tokens = self.prefix.claim(slot, s.prompt_ids, s.salt, rows)
        return s.cached_tokens

    def _shareable(self, i: int) -> list[int]:
        """The tokens of running slot `i` whose KV a prefill wrote: its prompt
        (a prompt to score goes in by decode steps: none). The KV of generated
        tokens is not shared: decode steps compute it along another path than a
        prefill does (on int4, logits differed by up to 0.5), and a chat's next
        turn would answer otherwise than without the cache."""
        s = self._running[i]
        return [] if s.score_prompt else s.prompt_ids[: self._lengths[i]]

    def _make_room(self, length: int) -> None:
        """Grows the cache for `length` positions when it must, keeping the live
        rows (worked out only then: not on every step)."""
        if length > self.model.capacity:
            self.model.ensure_capacity(length, self._live_rows())

    def _live_rows(self) -> dict[int, int]:
        """The cache rows whose contents matter, and how many positions of each:
        the batch, the prompt being written and the kept prefixes."""
        rows = dict(enumerate(self._lengths))
        if self._prefilling is not None and self._prefilled:
            rows[len(self._running)] = self._prefilled
        return {**rows, **self.prefix.lengths()}

    def _decode(self) -> None:
        forcing = [s.forcing for s in self._running]
        tokens = [s.next_input() for s in self._running]
        self._make_room(max(self._lengths) + 1)
        # The grammars' masks for this step are filled while the step runs.
        masks = self._masks.start(
            [
                (i, s.constraint)
                for i, s in enumerate(self._running)
                if s.constraint is not None and not forcing[i] and not s.done
            ]
        )
        logits = self.model.decode(tokens, self._lengths)
        self.steps += 1
        bitmask = None if masks is None else masks.result()
        for i, s in enumerate(self._running):
            self._lengths[i] += 1
            if s.done:
                continue
            if forcing[i]:
                s.written += 1
                s.after_prompt_token(logits[i], self._out)
            else:
                self.tokens_generated += 1
                mask = None if bitmask is None or s.constraint is None else bitmask[i]
                s.step(logits[i], self._out, mask)

    def _drop_finished(self) -> None:
        """Removes finished and cancelled sequences, keeping the slots contiguous
        (a prompt being written stays in the slot right after the running ones);
        each one's KV is kept for the prefixes it may serve."""
        before = len(self._running)
        prefilling = self._prefilling is not None
        i = 0
        while i < len(self._running):
            s = self._running[i]
            if not s.done:
                i += 1
                continue
            last = len(self._running) - 1
            # Rows from `floor` up were free when this turn began: nothing below
            # writes them. The last row stays as it is when no prompt moves in.
            floor = before + prefilling
            in_place = i == last and not prefilling
            self.prefix.keep(i, self._shareable(i), s.salt, floor, in_place)
            if i != last:
                self.model.move(last, i, self._lengths[last])
                self._running[i], self._lengths[i] = (
                    self._running[last],
                    self._lengths[last],
                )
            self._running.pop()
            self._lengths.pop()
        moved = len(self._running) != before
        if self._prefilling is not None and moved and self._prefilled:
            self.model.move(before, len(self._running), self._prefilled)
        if not self._running and self._prefilling is None:
            # Idle: give a grown cache back, down to what the kept rows need.
            self.model.shrink(self.prefix.lengths())
