"""One request inside the engine (`Sequence`), how a sampled token advances it, and
how its events cross from the decode thread to the asyncio side.

A scheduler's thread steps sequences; each step's events go through an `Outbox`:
one wakeup of an event loop per step, not one per token, which keeps the decode
thread and the loop from trading the GIL per token. `stream` is the asyncio end:
it submits a sequence and yields its events, and cancels it if the caller leaves.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from ..api.events import Delta, Event, Failure, Stop, StopReason, Usage
from .detok import IncrementalDetokenizer
from .sampling import Sampler
from .stopping import StopSequenceMatcher, TokenStopper


@dataclass(eq=False)
class Sequence:
    """One request's state inside the decode loop."""

    prompt_ids: list[int]
    sampler: Sampler
    stopper: TokenStopper
    stop_matcher: StopSequenceMatcher
    detokenizer: IncrementalDetokenizer
    emit: Callable[[Event], None] = lambda event: None
    # When set, `emit` is not thread-safe and runs on this loop (see `Outbox`).
    loop: asyncio.AbstractEventLoop | None = None
    received_at: float = field(default_factory=time.monotonic)
    generated: list[int] = field(default_factory=list)
    cache: Any = None  # the per-sequence KV cache of the serial loop
    finished: bool = False  # ended by itself: its `Stop` (or `Failure`) is out
    cancelled: bool = False  # the caller went away

    @property
    def done(self) -> bool:
        """No more tokens for this sequence: it leaves the batch at the next turn."""
        return self.finished or self.cancelled

    def usage(self) -> Usage:
        return Usage(
            duration_ms=int((time.monotonic() - self.received_at) * 1000),
            input_tokens=len(self.prompt_ids),
            output_tokens=len(self.generated),
        )

    def advance(self, token: int, out: Outbox) -> None:
        """Adds a sampled token and emits the text it releases; sets `finished`
        (and emits the `Stop`) when a stop condition is met."""
        self.generated.append(token)
        reason = self.stopper(token, len(self.generated))
        text = "" if reason is StopReason.END_TURN else self.detokenizer.add(token)
        text, matched = self.stop_matcher.feed(text)
        if matched:
            reason = StopReason.STOP_SEQUENCE
        elif reason is not None:
            text += self.stop_matcher.flush()
        if text:
            out.put(self, Delta(text))
        if reason is not None:
            out.put(self, Stop(reason, self.usage()))
            self.finished = True


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


class Scheduler(Protocol):
    """What both decode loops offer (`BatchScheduler`, `SerialScheduler`)."""

    tokens_generated: int

    @property
    def running(self) -> int: ...

    @property
    def queued(self) -> int: ...

    def submit(self, sequence: Sequence) -> None: ...

    def cancel(self, sequence: Sequence) -> None: ...

    def close(self) -> None: ...


async def stream(scheduler: Scheduler, sequence: Sequence) -> AsyncGenerator[Event]:
    """Runs `sequence` on `scheduler` and yields its events, the last a `Stop` or a
    `Failure`; a caller that stops listening cancels it (its compute is freed)."""
    events: asyncio.Queue[Event] = asyncio.Queue()
    sequence.emit, sequence.loop = events.put_nowait, asyncio.get_running_loop()
    scheduler.submit(sequence)
    finished = False
    try:
        while not finished:
            event = await events.get()
            finished = isinstance(event, Stop | Failure)
            yield event
    finally:
        if not finished:
            scheduler.cancel(sequence)
