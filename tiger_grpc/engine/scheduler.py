"""The decode loop: one thread per model steps its running sequences in turn.

Each step feeds one sequence's new tokens through the session, samples, detokenizes
and checks the stop conditions, then moves to the next sequence, so every request
makes progress and a cancelled one leaves before its next step. Events go back to
the asyncio side through each sequence's thread-safe `emit`.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from .detok import IncrementalDetokenizer
from .onnx_model import KVCache, OnnxCausalLM
from .sampling import Sampler
from .stopping import StopSequenceMatcher, TokenStopper
from .types import Delta, Event, Failure, Stop, StopReason, Usage

log = logging.getLogger(__name__)


@dataclass(eq=False)
class Sequence:
    """One request's state inside the decode loop."""

    prompt_ids: list[int]
    sampler: Sampler
    stopper: TokenStopper
    stop_matcher: StopSequenceMatcher
    detokenizer: IncrementalDetokenizer
    emit: Callable[[Event], None]
    received_at: float = field(default_factory=time.monotonic)
    generated: list[int] = field(default_factory=list)
    cache: KVCache | None = None
    cancelled: bool = False

    def usage(self) -> Usage:
        return Usage(
            duration_ms=int((time.monotonic() - self.received_at) * 1000),
            input_tokens=len(self.prompt_ids),
            output_tokens=len(self.generated),
        )


_CLOSE = object()


class Scheduler:
    """Owns a model's decode thread; `submit` and `cancel` are thread-safe."""

    def __init__(self, model: OnnxCausalLM, name: str) -> None:
        self.model = model
        self._incoming: queue.SimpleQueue[Sequence | object] = queue.SimpleQueue()
        self._running: list[Sequence] = []
        self._closed = False
        self.tokens_generated = 0
        self._thread = threading.Thread(target=self._loop, name=f"decode-{name}", daemon=True)
        self._thread.start()

    @property
    def running(self) -> int:
        """Sequences in the loop now (a cancelled one leaves within one step)."""
        return len(self._running)

    def submit(self, sequence: Sequence) -> None:
        if self._closed:
            raise RuntimeError("scheduler is closed")
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
        while self._admit(block=not self._running):
            for sequence in list(self._running):
                if sequence.cancelled:
                    self._running.remove(sequence)
                    continue
                try:
                    done = self._step(sequence)
                except Exception:
                    log.exception("decode step failed")
                    sequence.emit(Failure("internal error while generating"))
                    done = True
                if done:
                    self._running.remove(sequence)
        for sequence in self._running:
            sequence.emit(Failure("the server is shutting down"))
        self._running.clear()

    def _step(self, s: Sequence) -> bool:
        """Runs one forward pass for `s`; True when it has finished."""
        if s.cache is None:
            new_ids, s.cache = s.prompt_ids, self.model.empty_cache()
        else:
            new_ids = s.generated[-1:]
        logits, s.cache = self.model.forward(new_ids, s.cache)
        self.tokens_generated += 1
        return advance(s, s.sampler(logits))


def advance(s: Sequence, token: int) -> bool:
    """Adds a sampled token to `s` and emits what it releases; True when `s` is done."""
    s.generated.append(token)
    reason = s.stopper(token, len(s.generated))
    text = "" if reason is StopReason.END_TURN else s.detokenizer.add(token)
    text, matched = s.stop_matcher.feed(text)
    if matched:
        reason = StopReason.STOP_SEQUENCE
    elif reason is not None:
        text += s.stop_matcher.flush()
    if text:
        s.emit(Delta(text))
    if reason is None:
        return False
    s.emit(Stop(reason, s.usage()))
    return True
