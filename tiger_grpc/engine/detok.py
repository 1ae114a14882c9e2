"""UTF-8-safe incremental detokenizing, with `tokenizers`' own `DecodeStream`.

A byte-level tokenizer can split one character across tokens; decoding such a
prefix would yield U+FFFD. `DecodeStream` releases text only once it decodes
cleanly (the prefix-window approach of TGI and vLLM), so concatenated deltas equal
the full decode, and special tokens (the end of a turn) are never text.
"""

from __future__ import annotations

from typing import Any

from tokenizers.decoders import DecodeStream

REPLACEMENT = "\ufffd"


class IncrementalDetokenizer:
    def __init__(self, tokenizer: Any) -> None:
        # transformers' fast tokenizers wrap a `tokenizers.Tokenizer`.
        self._tokenizer = getattr(tokenizer, "backend_tokenizer", tokenizer)
        self._stream = DecodeStream(skip_special_tokens=True)

    def add(self, token_id: int) -> str:
        """Adds one token id; returns the new text that is whole, possibly ''."""
        text = self._stream.step(self._tokenizer, token_id)
        # A byte sequence that never completed leaves U+FFFD inside once later text
        # is whole: drop it rather than send a broken character.
        return text.replace(REPLACEMENT, "") if text else ""
