"""Tool calls as the model writes them, and back: one `<tool_call>` block per call,
holding a JSON object with the function's name first, then its arguments:

    <tool_call>
    {"name": "get_weather", "arguments": {"city": "Paris"}}
    </tool_call>

(the Hermes format Qwen's and other chat templates use). The engine constrains the
blocks with a grammar (`engine.grammar`), so each one parses and its arguments
validate; `ToolCallReader` turns streamed text into content, and calls as OpenAI
streams them (the name first, then fragments of the arguments).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

CALL_OPEN = "<tool_call>"
CALL_CLOSE = "</tool_call>"
HEAD = '{"name": '  # what a call's JSON starts with
ARGUMENTS = ', "arguments": '
_HEAD = re.compile(r'\s*\{\s*"name"\s*:\s*("(?:[^"\\]|\\.)*")\s*,\s*"arguments"\s*:\s*')
_TAIL = re.compile(r"\s*\}\s*</tool_call>")
_GIVE_UP = 256  # characters of a head or tail that do not parse: it was text


def call_text(name: str, arguments: str) -> str:
    """A call as the model writes it (for the turns of earlier calls)."""
    body = f"{HEAD}{json.dumps(name)}{ARGUMENTS}{arguments}}}"
    return f"{CALL_OPEN}\n{body}\n{CALL_CLOSE}"


@dataclass(frozen=True)
class Content:
    text: str


@dataclass(frozen=True)
class CallStart:
    index: int
    name: str


@dataclass(frozen=True)
class Arguments:
    index: int
    text: str


Piece = Content | CallStart | Arguments


class ToolCallReader:
    """Reads an answer's text as it streams: `feed` and `finish` give the pieces
    it releases. Text that may begin a call is held until it is known; whitespace
    around calls is not content."""

    def __init__(self) -> None:
        self._buffer = ""
        self._state = "text"
        self._space = ""  # whitespace held: content only if text follows it
        self.calls = 0  # calls started
        self._after_call = False
        self._depth = 0
        self._in_string = self._escaped = False

    def feed(self, text: str) -> list[Piece]:
        self._buffer += text
        out: list[Piece] = []
        while self._buffer and self._step(out):
            pass
        return out

    def finish(self) -> list[Piece]:
        """What is left at the end: a call cut short keeps what it has; an
        unfinished head or tail is text."""
        out: list[Piece] = []
        if self._state == "head":
            self._text(CALL_OPEN + self._buffer, out)
        elif self._state == "text":
            self._text(self._buffer, out)
        if self._space and not self.calls:
            out.append(Content(self._space))
        self._buffer = self._space = ""
        return out

    def _step(self, out: list[Piece]) -> bool:
        """Moves on as far as the buffer allows; False when it needs more text."""
        if self._state == "text":
            at = self._buffer.find(CALL_OPEN)
            if at < 0:
                keep = _partial_suffix(self._buffer, CALL_OPEN)
                self._text(self._buffer[: len(self._buffer) - keep], out)
                self._buffer = self._buffer[len(self._buffer) - keep :]
                return False
            self._text(self._buffer[:at], out)
            self._space = ""  # whitespace before a call is not content
            self._buffer, self._state = self._buffer[at + len(CALL_OPEN) :], "head"
            return True
        if self._state == "head":
            return self._head(out)
        if self._state == "arguments":
            return self._arguments(out)
        return self._tail()

    def _text(self, text: str, out: list[Piece]) -> None:
        if self._after_call:  # whitespace right after a call is not content
            text = text.lstrip()
            if not text:
                return
            self._after_call = False
        text = self._space + text
        body = text.rstrip()
        self._space = text[len(body) :]
        if body:
            out.append(Content(body))

    def _head(self, out: list[Piece]) -> bool:
        match = _HEAD.match(self._buffer)
        if match is None:
            if len(self._buffer) > _GIVE_UP:  # not a call after all
                self._text(CALL_OPEN + self._buffer, out)
                self._buffer, self._state = "", "text"
            return False
        out.append(CallStart(self.calls, json.loads(match.group(1))))
        self.calls += 1
        self._buffer, self._state = self._buffer[match.end() :], "arguments"
        self._depth, self._in_string, self._escaped = 0, False, False
        return True

    def _arguments(self, out: list[Piece]) -> bool:
        if self._depth == 0:  # whitespace before the value is not part of it
            self._buffer = self._buffer.lstrip()
            if not self._buffer:
                return False
        end = self._value_end()
        fragment = self._buffer if end is None else self._buffer[:end]
        if fragment:
            out.append(Arguments(self.calls - 1, fragment))
        if end is None:
            self._buffer = ""
            return False
        self._buffer, self._state = self._buffer[end:], "tail"
        return True

    def _value_end(self) -> int | None:
        """Where the arguments' JSON value ends in the buffer (None: not in it)."""
        for i, char in enumerate(self._buffer):
            if self._in_string:
                if self._escaped:
                    self._escaped = False
                elif char == "\\":
                    self._escaped = True
                elif char == '"':
                    self._in_string = False
            elif char == '"':
                self._in_string = True
            elif char in "{[":
                self._depth += 1
            elif char in "}]":
                self._depth -= 1
                if self._depth == 0:
                    return i + 1
        return None

    def _tail(self) -> bool:
        match = _TAIL.match(self._buffer)
        if match is None:
            if len(self._buffer) > _GIVE_UP:
                self._state = "text"  # what follows the call is text
                return True
            return False
        self._buffer, self._state = self._buffer[match.end() :], "text"
        self._after_call = True
        return True


def _partial_suffix(text: str, marker: str) -> int:
    """The length of the longest end of `text` that begins `marker`."""
    for size in range(min(len(text), len(marker) - 1), 0, -1):
        if marker.startswith(text[-size:]):
            return size
    return 0


def read_all(text: str) -> tuple[str | None, list[tuple[str, str]]]:
    """A whole answer: its content (None when only calls) and its calls as (name,
    arguments) pairs."""
    reader = ToolCallReader()
    pieces = [*reader.feed(text), *reader.finish()]
    content = "".join(p.text for p in pieces if isinstance(p, Content))
    calls: list[list[str]] = []
    for piece in pieces:
        if isinstance(piece, CallStart):
            calls.append([piece.name, ""])
        elif isinstance(piece, Arguments):
            calls[piece.index][1] += piece.text
    return (content or None), [(name, args) for name, args in calls]
