"""A token's text and exact bytes, as log-probabilities report them.

A byte-level BPE token (GPT-2, Llama-3, SmolLM2) maps its characters back to
bytes through GPT-2's byte alphabet; a SentencePiece token is `▁` for a space or
`<0xNN>` for a raw byte. A token may hold part of a UTF-8 character: its bytes are
exact, its text shows U+FFFD for what is not whole.
"""

from __future__ import annotations

import functools
import json
import re
import threading
import weakref
from typing import Any

_BYTE = re.compile(r"<0x([0-9A-Fa-f]{2})>")


@functools.cache
def _byte_alphabet() -> dict[str, int]:
    """GPT-2's printable stand-in character for each byte, inverted."""
    printable = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("¡"), ord("¬") + 1),
        *range(ord("®"), ord("ÿ") + 1),
    ]
    chars = list(printable)
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + extra)
            extra += 1
    return {chr(c): b for b, c in zip(printable, chars, strict=True)}


def _decoder_types(tokenizer: Any) -> set[str]:
    """The types of a fast tokenizer's decoders (a `Sequence` holds several)."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        return set()
    found: set[str] = set()
    pending = [json.loads(backend.to_str()).get("decoder") or {}]
    while pending:
        decoder = pending.pop()
        found.add(decoder.get("type", ""))
        pending.extend(decoder.get("decoders") or [])
    return found


class TokenTexts:
    """`texts(token_id) -> (text, bytes)`, cached per token."""

    def __init__(self, tokenizer: Any) -> None:
        self._tokenizer = tokenizer
        self._byte_level = "ByteLevel" in _decoder_types(tokenizer)
        self._special = set(getattr(tokenizer, "all_special_ids", ()))
        self._cache: dict[int, tuple[str, bytes]] = {}

    def __call__(self, token_id: int) -> tuple[str, bytes]:
        """A special token (BOS, the end of a turn) is its name, and no bytes: it
        is not text, so text offsets skip it."""
        found = self._cache.get(token_id)
        if found is None:
            if token_id in self._special:
                name = self._tokenizer.convert_ids_to_tokens(token_id) or ""
                found = (name, b"")
            else:
                data = self._bytes(token_id)
                found = (data.decode("utf-8", "replace"), data)
            self._cache[token_id] = found
        return found

    def _bytes(self, token_id: int) -> bytes:
        piece = self._tokenizer.convert_ids_to_tokens(token_id)
        if piece is None:
            return b""
        if self._byte_level:
            alphabet = _byte_alphabet()
            if all(c in alphabet for c in piece):
                return bytes(alphabet[c] for c in piece)
            return piece.encode()
        if match := _BYTE.fullmatch(piece):
            return bytes([int(match.group(1), 16)])
        return piece.replace("\u2581", " ").encode()


_SHARED: weakref.WeakKeyDictionary[Any, TokenTexts] = weakref.WeakKeyDictionary()
_SHARED_LOCK = threading.Lock()


def texts_of(tokenizer: Any) -> TokenTexts:
    """The one `TokenTexts` of `tokenizer`: log-probabilities and the grammar's
    vocabulary (which reads every token once) share its cache."""
    with _SHARED_LOCK:
        found = _SHARED.get(tokenizer)
        if found is None:
            found = _SHARED[tokenizer] = TokenTexts(tokenizer)
        return found
