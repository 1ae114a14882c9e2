"""Deciding when a sequence stops: end-of-turn tokens, max_tokens, stop sequences."""

from __future__ import annotations

from collections.abc import Iterable

from ..api.events import StopReason


class TokenStopper:
    """Stops on the model's end-of-turn ids and after `max_tokens` tokens."""

    def __init__(self, eos_token_ids: Iterable[int], max_tokens: int) -> None:
        self.eos_token_ids = frozenset(eos_token_ids)
        self.max_tokens = max_tokens

    def __call__(self, token_id: int, generated: int) -> StopReason | None:
        """`generated` counts the tokens so far, `token_id` included."""
        if token_id in self.eos_token_ids:
            return StopReason.END_TURN
        if generated >= self.max_tokens:
            return StopReason.MAX_TOKENS
        return None


class StopSequenceMatcher:
    """Cuts streamed text at the first stop sequence, whatever the chunking.

    Text that could still be the start of a stop sequence is held back until it is
    known not to be, so no part of a stop sequence is ever released.
    """

    def __init__(self, stop_sequences: Iterable[str]) -> None:
        self.stop_sequences = tuple(s for s in stop_sequences if s)
        self._pending = ""

    def feed(self, text: str) -> tuple[str, bool]:
        """Adds text; returns (text safe to release now, whether a stop matched)."""
        if not self.stop_sequences:
            return text, False
        buffer = self._pending + text
        first = min(
            (i for i in (buffer.find(s) for s in self.stop_sequences) if i >= 0),
            default=-1,
        )
        if first >= 0:
            self._pending = ""
            return buffer[:first], True
        hold = self._longest_partial_suffix(buffer)
        self._pending = buffer[len(buffer) - hold :]
        return buffer[: len(buffer) - hold], False

    def flush(self) -> str:
        """Releases what was held back when generation ends without a match."""
        text, self._pending = self._pending, ""
        return text

    def _longest_partial_suffix(self, buffer: str) -> int:
        longest = 0
        for stop in self.stop_sequences:
            for size in range(min(len(stop) - 1, len(buffer)), longest, -1):
                if buffer.endswith(stop[:size]):
                    longest = size
                    break
        return longest
