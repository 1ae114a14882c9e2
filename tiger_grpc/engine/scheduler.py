"""The decode loop: one thread per model steps its running sequences in turn.

Each step feeds one sequence's new tokens through the session, samples, detokenizes
and checks the stop conditions, then moves to the next sequence, so every request
makes progress and a cancelled one leaves before its next step. Events go back to
the asyncio side through an `Outbox`: one wakeup of an event loop per step, not one
per token, which keeps the decode thread and the loop from trading the GIL per token.
"""

from __future__ import annotations

import asyncio
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
    # When set, `emit` is not thread-safe and runs on this loop (see `Outbox`).
    loop: asyncio.AbstractEventLoop | None = None
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


class Outbox:
    """Collects a step's events and hands them over in one call per event loop."""

    def __init__(self) -> None:
        self._pending: dict[
            asyncio.AbstractEventLoop, list[tuple[Callable[[Event], None], Event]]
        ] = {}

    def put(self, s: Sequence, event: Event) -> None:
        if s.loop is None:
            s.emit(event)
        else:
            self._pending.setdefault(s.loop, []).append((s.emit, event))

    def flush(self) -> None:
        for loop, items in self._pending.items():
            try:
                loop.call_soon_threadsafe(_deliver, items)
            except RuntimeError:  # the loop has closed: nobody is listening
                pass
        self._pending = {}


def _deliver(items: list[tuple[Callable[[Event], None], Event]]) -> None:
    for emit, event in items:
        emit(event)


_CLOSE = object()


class Scheduler:
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
        out = Outbox()
        while self._admit(block=not self._running):
            for sequence in list(self._running):
                if sequence.cancelled:
                    self._running.remove(sequence)
                    continue
                try:
                    done = self._step(sequence, out)
                except Exception:
                    log.exception("decode step failed")
                    out.put(sequence, Failure("internal error while generating"))
                    done = True
                if done:
                    self._running.remove(sequence)
                out.flush()
        for sequence in self._running:
            out.put(sequence, Failure("the server is shutting down"))
        out.flush()
        self._running.clear()

    def _step(self, s: Sequence, out: Outbox) -> bool:
        """Runs one forward pass for `s`; True when it has finished."""
        if s.cache is None:
            new_ids, s.cache = s.prompt_ids, self.model.empty_cache()
        else:
            new_ids = s.generated[-1:]
        logits, s.cache = self.model.forward(new_ids, s.cache)
        self.tokens_generated += 1
        return advance(s, s.sampler(logits), out)


def advance(s: Sequence, token: int, out: Outbox) -> bool:
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
        out.put(s, Delta(text))
    if reason is None:
        return False
    out.put(s, Stop(reason, s.usage()))
    return True
