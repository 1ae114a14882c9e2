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

import numpy as np

from ..api.events import (
    Delta,
    Event,
    Failure,
    PromptLogprobs,
    Stop,
    StopReason,
    TokenLogprob,
    TopLogprob,
    Usage,
)
from .detok import IncrementalDetokenizer
from .grammar import Constraint, GrammarError
from .prefix import CacheStats
from .sampling import Sampler, token_logprob
from .stopping import StopSequenceMatcher, TokenStopper
from .tokens import TokenTexts


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
    index: int = 0  # the choice of its request
    # Log-probabilities: of each generated token, with this many alternatives
    # (None: off); of every prompt token (`score_prompt`).
    logprobs: int | None = None
    score_prompt: bool = False
    prompt_top: int = 0  # alternatives reported for each prompt token
    texts: TokenTexts | None = None  # token ids -> text and bytes, for logprobs
    # Prompt tokens in the KV cache: a prompt to score goes in a token per decode
    # step, in the batch, its logits scoring the next one (teacher forcing).
    written: int = 0
    # Prefix caching: entries are shared only within one salt; how many prompt
    # tokens came from the cache rather than being computed.
    salt: str = ""
    cached_tokens: int = 0
    # Constrained decoding: the grammar's matcher (None: free text).
    constraint: Constraint | None = None
    _pending: list[TokenLogprob] = field(default_factory=list)
    _prompt_scores: list[TokenLogprob] = field(default_factory=list)

    @property
    def done(self) -> bool:
        """No more tokens for this sequence: it leaves the batch at the next turn."""
        return self.finished or self.cancelled

    def usage(self) -> Usage:
        return Usage(
            duration_ms=int((time.monotonic() - self.received_at) * 1000),
            input_tokens=len(self.prompt_ids),
            output_tokens=len(self.generated),
            cached_tokens=self.cached_tokens,
        )

    def step(
        self, logits: np.ndarray, out: Outbox, mask: np.ndarray | None = None
    ) -> None:
        """Samples the next token from `logits` and advances by it. Under a
        grammar, only from the tokens it allows (`mask`, when the batch filled it
        already); log-probabilities stay the model's own."""
        constraint = self.constraint
        if constraint is None:
            token = self.sampler(logits)
        else:
            try:
                token = constraint.choose(self.sampler, logits, mask)
            except GrammarError as exc:
                out.put(self, Failure(f"constrained decoding failed: {exc}"))
                self.finished = True
                return
        if self.logprobs is not None:
            self._pending.append(self._logprob(logits, token, self.logprobs))
        self.advance(token, out)

    def advance(self, token: int, out: Outbox) -> None:
        """Adds a sampled token and emits the text it releases (with the tokens'
        log-probabilities, when asked); sets `finished` (and emits the `Stop`)
        when a stop condition is met."""
        self.generated.append(token)
        reason = self.stopper(token, len(self.generated))
        if reason is StopReason.END_TURN:
            text = ""
            self._pending[-1:] = []  # the end of the turn is not text
        else:
            text = self.detokenizer.add(token)
            if reason is None and self.constraint and self.constraint.complete:
                reason = StopReason.END_TURN  # the grammar allows nothing more
        text, matched = self.stop_matcher.feed(text)
        if matched:
            reason = StopReason.STOP_SEQUENCE
        elif reason is not None:
            text += self.stop_matcher.flush()
        if text or (reason is not None and self._pending):
            # At the end, tokens of a character never completed are no text, but
            # their log-probabilities are still owed.
            out.put(self, Delta(text, self.index, tuple(self._pending)))
            self._pending.clear()
        if reason is not None:
            out.put(self, Stop(reason, self.usage(), self.index))
            self.finished = True

    @property
    def forcing(self) -> bool:
        """Still writing its prompt a token per step (to score it)."""
        return self.score_prompt and self.written < len(self.prompt_ids)

    def next_input(self) -> int:
        """The token a decode step feeds it: its next prompt token while forcing,
        else the token it sampled last."""
        return self.prompt_ids[self.written] if self.forcing else self.generated[-1]

    def after_prompt_token(self, logits: np.ndarray, out: Outbox) -> None:
        """Takes the logits after prompt token `written - 1`: they score the next
        prompt token; after the last one, they give the first generated token
        (unless nothing is to be generated)."""
        if self.written < len(self.prompt_ids):
            self.score(self.written - 1, logits)
        elif not self.prompt_done(out):
            self.step(logits, out)

    def score(self, position: int, logits: np.ndarray) -> None:
        """Records the log-probability of prompt token `position + 1`, which
        `logits` (those at `position`) predict."""
        self._prompt_scores.append(
            self._logprob(logits, self.prompt_ids[position + 1], self.prompt_top)
        )

    def prompt_done(self, out: Outbox) -> bool:
        """Emits the prompt's log-probabilities (when scored); True (and the `Stop`
        emitted) when nothing is to be generated (`max_tokens` 0)."""
        if self.score_prompt and self.texts is not None:
            text, data = self.texts(self.prompt_ids[0])
            first = TokenLogprob(self.prompt_ids[0], text, data, None)
            out.put(self, PromptLogprobs((first, *self._prompt_scores)))
        if self.stopper.max_tokens > 0:
            return False
        out.put(self, Stop(StopReason.MAX_TOKENS, self.usage(), self.index))
        self.finished = True
        return True

    def _logprob(self, logits: np.ndarray, token: int, top: int) -> TokenLogprob:
        assert self.texts is not None, "log-probabilities need the token texts"
        texts = self.texts
        value, best = token_logprob(logits, token, top)
        alternatives = tuple(TopLogprob(i, *texts(i), v) for i, v in best)
        return TokenLogprob(token, *texts(token), value, alternatives)


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

    def submit(self, *sequences: Sequence) -> None: ...

    def cancel(self, sequence: Sequence) -> None: ...

    def cache_stats(self) -> CacheStats: ...

    def close(self) -> None: ...


async def stream(
    scheduler: Scheduler, sequences: list[Sequence]
) -> AsyncGenerator[Event]:
    """Runs `sequences` (the choices of one request) on `scheduler` and yields their
    events as they come, until each has ended with a `Stop`, or one with a
    `Failure` (the last event then); a caller that stops listening cancels those
    still running (their compute is freed)."""
    events: asyncio.Queue[Event] = asyncio.Queue()
    loop = asyncio.get_running_loop()
    for sequence in sequences:
        sequence.emit, sequence.loop = events.put_nowait, loop
    scheduler.submit(*sequences)
    running = len(sequences)
    try:
        while running:
            event = await events.get()
            if isinstance(event, Failure):
                running = 0
            elif isinstance(event, Stop):
                running -= 1
            yield event
    finally:
        for sequence in sequences:
            if not sequence.done:
                scheduler.cancel(sequence)
