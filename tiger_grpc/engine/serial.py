"""The serial decode loop, for models without a fused graph (any optimum export):
one thread per model steps its running sequences in turn.

Each step feeds one sequence's new tokens through the session (its KV cache is its
own), samples, detokenizes and checks the stop conditions, then moves to the next
sequence, so every request makes progress and a cancelled one leaves before its
next step.
"""

from __future__ import annotations

import logging
import queue
import threading

from ..api.events import Failure
from .optimum import OnnxCausalLM
from .prefix import CacheStats
from .sequence import Outbox, Sequence

log = logging.getLogger(__name__)

_CLOSE = object()


class SerialScheduler:
    """Owns a model's decode thread; `submit` and `cancel` are thread-safe."""

    def __init__(self, model: OnnxCausalLM, name: str) -> None:
        self.model = model
        self._incoming: queue.SimpleQueue[Sequence | object] = queue.SimpleQueue()
        self._running: list[Sequence] = []
        self._closed = False
        self.tokens_generated = 0
        self._thread = threading.Thread(
            target=self._loop, name=f"decode-{name}", daemon=True
        )
        self._thread.start()

    @property
    def running(self) -> int:
        """Sequences in the loop now (a cancelled one leaves within one step)."""
        return len(self._running)

    @property
    def queued(self) -> int:
        return self._incoming.qsize()

    def cache_stats(self) -> CacheStats:
        """The serial loop keeps no prefixes."""
        return CacheStats()

    def submit(self, *sequences: Sequence) -> None:
        if self._closed:
            raise RuntimeError("scheduler is closed")
        for sequence in sequences:
            self._incoming.put(sequence)

    def cancel(self, sequence: Sequence) -> None:
        sequence.cancelled = True

    def close(self) -> None:
        self._closed = True
        self._incoming.put(_CLOSE)
        self._thread.join(timeout=30)

    def _admit(self, block: bool) -> bool:
        """Moves new sequences into the running set; False once closed."""
        try:
            item = self._incoming.get(block=block)
            while True:
                if item is _CLOSE:
                    return False
                assert isinstance(item, Sequence)
                self._running.append(item)
                item = self._incoming.get_nowait()
        except queue.Empty:
            return True

    def _loop(self) -> None:
        out = Outbox()
        while self._admit(block=not self._running):
            for sequence in list(self._running):
                if sequence.done:
                    self._running.remove(sequence)
                    continue
                try:
                    self._step(sequence, out)
                except Exception:
                    log.exception("decode step failed")
                    out.put(sequence, Failure("internal error while generating"))
                    sequence.finished = True
                if sequence.done:
                    self._running.remove(sequence)
                out.flush()
        for sequence in self._running:
            out.put(sequence, Failure("the server is shutting down"))
        out.flush()
        self._running.clear()

    def _step(self, s: Sequence, out: Outbox) -> None:
        """Runs one forward pass for `s` and advances it by the token it samples."""
        if s.cache is None and s.stopper.max_tokens == 0 and not s.score_prompt:
            s.prompt_done(out)  # nothing to generate nor score: no need to run it
            return
        if s.cache is None:
            rows, s.cache = self.model.forward(
                s.prompt_ids, self.model.empty_cache(), every_position=s.score_prompt
            )
            logits = rows[-1] if s.score_prompt else rows
            for position in range(len(s.prompt_ids) - 1 if s.score_prompt else 0):
                s.score(position, rows[position])
            if s.prompt_done(out):
                return
        else:
            logits, s.cache = self.model.forward(s.generated[-1:], s.cache)
        self.tokens_generated += 1
        s.step(logits, out)
