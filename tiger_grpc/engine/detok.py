"""UTF-8-safe incremental detokenizing.

A byte-level tokenizer can split one character across tokens; decoding such a
prefix yields U+FFFD. Text is released only once it decodes cleanly: the window
`ids[prefix:]` is decoded and compared with `ids[prefix:read]`, the approach of TGI
and vLLM, so concatenated deltas equal the full decode.
"""

from __future__ import annotations

from typing import Any

REPLACEMENT = "\ufffd"


class IncrementalDetokenizer:
    def __init__(self, tokenizer: Any) -> None:
        self._tokenizer = tokenizer
        self._ids: list[int] = []
        self._prefix = 0  # start of the decode window
        self._read = 0  # ids before this are released

    def _decode(self, ids: list[int]) -> str:
        return self._tokenizer.decode(
            ids, skip_special_tokens=True, clean_up_tokenization_spaces=False
        )

    def add(self, token_id: int) -> str:
        """Adds one token id; returns the new text that is whole, possibly ''."""
        self._ids.append(token_id)
        before = self._decode(self._ids[self._prefix : self._read])
        after = self._decode(self._ids[self._prefix :])
        if len(after) <= len(before) or after.endswith(REPLACEMENT):
            return ""  # an incomplete character (or a special token): wait
        self._prefix, self._read = self._read, len(self._ids)
        # A byte sequence that never completed leaves U+FFFD inside; drop it rather
        # than send a broken character.
        return after[len(before) :].replace(REPLACEMENT, "")
