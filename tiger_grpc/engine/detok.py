"""UTF-8-safe incremental detokenizing, with `tokenizers`' own `DecodeStream`.

A byte-level tokenizer can split one character across tokens; decoding such a
prefix would yield U+FFFD. `DecodeStream` releases text only once it decodes
cleanly (the prefix-window approach of TGI and vLLM), so concatenated deltas equal
the full decode, and special tokens (the end of a turn) are never text.

`DecodeStream` refuses a step whose decode does not extend the text before it
("Invalid prefix", which some decoders' normalizations can cause) and works only
with fast tokenizers; the sequence then goes on with the same window approach
through the tokenizer's own `decode`, rather than failing.
"""

from __future__ import annotations

from typing import Any

from tokenizers import Tokenizer
from tokenizers.decoders import DecodeStream

REPLACEMENT = "\ufffd"


class IncrementalDetokenizer:
    def __init__(self, tokenizer: Any) -> None:
        self._tokenizer = tokenizer
        # transformers' fast tokenizers wrap a `tokenizers.Tokenizer`.
        backend = getattr(tokenizer, "backend_tokenizer", tokenizer)
        self._backend = backend if isinstance(backend, Tokenizer) else None
        self._stream: DecodeStream | None = DecodeStream(skip_special_tokens=True)
        self._ids: list[int] = []
        self._prefix = 0  # the decode window of the fallback starts here
        self._read = 0  # ids before this are released

    def add(self, token_id: int) -> str:
        """Adds one token id; returns the new text that is whole, possibly ''."""
        self._ids.append(token_id)
        text = None
        if self._stream is not None and self._backend is not None:
            try:
                text = self._stream.step(self._backend, token_id)
            except Exception:  # noqa: BLE001 - the window decode takes over
                self._stream = None
                return self._window()
            if text:
                self._prefix, self._read = self._read, len(self._ids)
        else:
            return self._window()
        # A byte sequence that never completed leaves U+FFFD inside once later text
        # is whole: drop it rather than send a broken character.
        return text.replace(REPLACEMENT, "") if text else ""

    def _decode(self, ids: list[int]) -> str:
        return self._tokenizer.decode(
            ids, skip_special_tokens=True, clean_up_tokenization_spaces=False
        )

    def _window(self) -> str:
        """Decodes `ids[prefix:]` against `ids[prefix:read]`; releases the new text
        once it is whole."""
        before = self._decode(self._ids[self._prefix : self._read])
        after = self._decode(self._ids[self._prefix :])
        if len(after) <= len(before) or after.endswith(REPLACEMENT):
            return ""  # an incomplete character (or a special token): wait
        self._prefix, self._read = self._read, len(self._ids)
        return after[len(before) :].replace(REPLACEMENT, "")
