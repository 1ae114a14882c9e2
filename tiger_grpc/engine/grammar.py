"""Constrained decoding with llguidance: a request's response format and tools
become one grammar; each of its sequences gets a matcher that masks, before every
sample, the tokens that would leave the grammar, and takes the token sampled.

llguidance (Rust, no Python dependencies) computes a mask from the tokenizer's
byte strings in tens of microseconds (0.003 to 0.4 ms a token on the embedded
model's 49,152-token vocabulary, compiling a schema in about 1 ms); masks come
as numpy bitmasks, which suits ONNX Runtime's numpy logits. In the batch, the
masks of the constrained sequences are filled on a thread of their own while the
decode step runs (`MaskFiller`); sequences without a format pay nothing.

JSON is written compactly, as `json.dumps` does (`", "` and `": "`, no other
whitespace): a small model given free whitespace can loop on newlines.
"""

from __future__ import annotations

import concurrent.futures
import json
import re
from collections.abc import Iterable
from typing import Any

import llguidance as llg
import llguidance.numpy as llg_numpy
import numpy as np

from ..api.errors import InvalidArgumentError
from ..api.formats import ResponseFormat, Tool
from ..api.params import GenerateParams
from ..api.toolcalls import ARGUMENTS, CALL_CLOSE, CALL_OPEN, HEAD
from .sampling import Sampler
from .tokens import texts_of

JSON_OPTIONS = {
    "whitespace_flexible": False,
    "item_separator": ", ",
    "key_separator": ": ",
}


def grammar_tokenizer(tokenizer: Any, eos_token_ids: Iterable[int]) -> Any:
    """llguidance's view of a tokenizer: each token's exact bytes (special tokens
    marked as such) and the tokens that end a turn. About 0.3 s for 49k tokens:
    made once per model."""
    texts = texts_of(tokenizer)
    special = set(getattr(tokenizer, "all_special_ids", ()))
    eos = sorted(set(eos_token_ids))

    class Vocabulary:
        eos_token_id = eos[0]
        bos_token_id = None
        special_token_ids = sorted(special)
        tokens = [
            b"\xff" + texts(i)[0].encode() if i in special else texts(i)[1]
            for i in range(len(tokenizer))
        ]

        def __call__(self, text: str) -> list[int]:
            return [int(i) for i in tokenizer.encode(text, add_special_tokens=False)]

    return llg.LLTokenizer(llg.TokenizerWrapper(Vocabulary()), eos_token=eos)


def needs_grammar(params: GenerateParams) -> bool:
    fmt = params.response_format
    return params.calls_tools or (fmt is not None and fmt.constrained)


def request_grammar(vocabulary: Any, params: GenerateParams) -> str:
    """The grammar of a request's format and tools, checked: a feature llguidance
    cannot enforce is an `InvalidArgumentError` naming the field and the feature."""
    fmt = params.response_format
    answer = fmt if fmt is not None and fmt.constrained else None
    for i, tool in enumerate(params.tools if params.calls_tools else ()):
        arguments = _schema_grammar(_arguments(tool.parameters))
        _check(vocabulary, arguments, f"tools[{i}].parameters")
    if not params.calls_tools:
        assert answer is not None
        grammar = _format_grammar(answer)
    else:
        tools = params.tools
        if params.tool_choice == "function":
            tools = tuple(t for t in tools if t.name == params.tool_function)
        grammar = llg.LLMatcher.grammar_from_lark(
            _tools_lark(tools, params.tool_choice, params.parallel_tool_calls, answer)
        )
    _check(vocabulary, grammar, _field(answer))
    return grammar


def _field(fmt: ResponseFormat | None) -> str:
    if fmt is None:
        return "tools"
    return {"json_schema": "response_format.json_schema.schema"}.get(
        fmt.type, f"response_format.{fmt.type}"
    )


def _check(vocabulary: Any, grammar: str, field: str) -> None:
    failed, messages = llg.LLMatcher.validate_grammar_with_warnings(grammar, vocabulary)
    if failed:
        problem = messages[0].strip().splitlines()
        raise InvalidArgumentError(
            f"`{field}` cannot be enforced: {' '.join(problem)[:500]}"
        )


def _with_options(schema: dict[str, Any]) -> dict[str, Any]:
    own = schema.get("x-guidance")
    return {**schema, "x-guidance": {**JSON_OPTIONS, **(own or {})}}


def _schema_grammar(schema: dict[str, Any]) -> str:
    return str(llg.LLMatcher.grammar_from_json_schema(_with_options(schema)))


def _format_grammar(fmt: ResponseFormat) -> str:
    if fmt.type == "regex":
        assert fmt.regex is not None
        return str(llg.LLMatcher.grammar_from_regex(fmt.regex))
    if fmt.type == "choice":
        return str(llg.LLMatcher.grammar_from_lark(f"start: {_answer_lark(fmt)}"))
    return _schema_grammar(_json_schema(fmt))


def _json_schema(fmt: ResponseFormat) -> dict[str, Any]:
    if fmt.type == "json_object":
        return {"type": "object"}
    assert fmt.json_schema is not None
    return fmt.json_schema.json_schema


def _answer_lark(fmt: ResponseFormat) -> str:
    """A format as one Lark expansion."""
    if fmt.type == "choice":
        assert fmt.choice is not None
        return " | ".join(json.dumps(c) for c in fmt.choice)
    if fmt.type == "regex":
        assert fmt.regex is not None
        return "/" + _slashes_escaped(fmt.regex) + "/"
    return "%json " + json.dumps(_with_options(_json_schema(fmt)))


_ESCAPE_OR_SLASH = re.compile(r"\\.|/", re.S)  # an escape (any two) or a slash


def _slashes_escaped(pattern: str) -> str:
    """A regular expression inside Lark's `/.../`: each `/` not already escaped
    gets its backslash (escapes are matched in pairs, so `\\\\/` is handled)."""
    return _ESCAPE_OR_SLASH.sub(lambda m: r"\/" if m[0] == "/" else m[0], pattern)


def _arguments(parameters: dict[str, Any]) -> dict[str, Any]:
    """A function's arguments are a JSON object, whatever else its schema says."""
    return {**parameters, "type": "object"}


def _tools_lark(
    tools: tuple[Tool, ...],
    choice: str,
    parallel: bool,
    answer: ResponseFormat | None,
) -> str:
    """Calls are `<tool_call>` blocks (`api.toolcalls`), each a function's name and
    arguments valid for its schema. `required` or a named function: the answer is
    calls only. `auto`: text, in which a call may begin (llguidance's lazy
    lexeme: the grammar takes over once `<tool_call>` is written), or the answer
    in the response format, or calls."""
    functions = [
        f"fn_{i}: {json.dumps(f'{HEAD}{json.dumps(t.name)}{ARGUMENTS}')} "
        f'%json {json.dumps(_with_options(_arguments(t.parameters)))} "}}"'
        for i, t in enumerate(tools)
    ]
    body = "body: " + " | ".join(f"fn_{i}" for i in range(len(tools)))
    close = json.dumps(f"\n{CALL_CLOSE}")
    more = ' ("\\n" call)*' if parallel else ""
    rules = [
        "%llguidance {}",
        f"call: {json.dumps(CALL_OPEN + chr(10))} body {close}",
        body,
        *functions,
    ]
    if choice != "auto":
        rules.insert(1, f"start: call{more}")
    elif answer is not None:
        rules.insert(1, f"start: answer | call{more}")
        rules.append(f"answer: {_answer_lark(answer)}")
    else:
        repeat = "*" if parallel else "?"
        rules[1:1] = [
            f"start: (text_call){repeat} tail",
            "tail: TEXT",
            "TEXT: /(.|\\n)*/",
            f"trigger[lazy]: TEXT {json.dumps(CALL_OPEN)}",
            f'text_call: trigger "\\n" body {close}',
        ]
    return "\n".join(rules) + "\n"


class Constraint:
    """One sequence's matcher: the mask before each sample, the token after."""

    def __init__(self, vocabulary: Any, grammar: str) -> None:
        self.matcher = llg.LLMatcher(vocabulary, grammar)
        self.words = llg_numpy.get_bitmask_shape(1, vocabulary.vocab_size)[1]

    def copy(self) -> Constraint:
        """Another sequence's constraint in this one's state, from a copy of the
        compiled matcher (a request's choices compile their grammar once)."""
        twin = object.__new__(Constraint)
        twin.matcher, twin.words = self.matcher.deep_copy(), self.words
        return twin

    def mask(self) -> np.ndarray:
        """The allowed tokens now, as a row of 32-bit words (bit i: token i)."""
        row = np.zeros((1, self.words), np.int32)
        llg_numpy.fill_next_token_bitmask(self.matcher, row)
        return row[0]

    def choose(
        self, sampler: Sampler, logits: np.ndarray, mask: np.ndarray | None = None
    ) -> int:
        """The sampler's token among those the grammar allows, and takes it. Greedy
        without penalties, the best token is taken as it is when the grammar
        allows it (the same token the masked logits give, without masking them)."""
        row = self.mask() if mask is None else mask
        token = int(np.argmax(logits)) if sampler.plain_greedy else -1
        if not (0 <= token < row.shape[0] * 32 and row[token >> 5] >> (token & 31) & 1):
            token = sampler(self.allowed(logits, row))
        self.consume(token)
        return token

    def allowed(self, logits: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
        """`logits` with the tokens the grammar forbids at -inf (a copy)."""
        row = self.mask() if mask is None else mask
        bits = np.unpackbits(row.view(np.uint8), bitorder="little").view(bool)
        size = logits.shape[-1]
        if bits.shape[0] < size:
            bits = np.concatenate([bits, np.zeros(size - bits.shape[0], bool)])
        if not bits[:size].any():
            raise GrammarError(self.matcher.get_error() or "no token is allowed")
        return np.where(bits[:size], logits, np.float32(-np.inf))

    def consume(self, token: int) -> None:
        if not self.matcher.consume_token(token):
            raise GrammarError(self.matcher.get_error())

    @property
    def complete(self) -> bool:
        """The grammar is done: nothing but the end of the turn may follow."""
        return bool(self.matcher.is_stopped())


class GrammarError(RuntimeError):
    """A matcher refused (an engine fault: sampling follows the mask)."""


class MaskFiller:
    """Fills the masks of a batch's constrained sequences on a thread of its own
    (llguidance works without the GIL), while the decode step runs."""

    def __init__(self, rows: int) -> None:
        self._rows = rows
        self._pool: concurrent.futures.ThreadPoolExecutor | None = None
        self._executor: Any = None
        self._bitmask: np.ndarray | None = None

    def start(
        self, constraints: list[tuple[int, Constraint]]
    ) -> concurrent.futures.Future[np.ndarray] | None:
        """Begins filling the masks of (row, constraint) pairs; None when none."""
        if not constraints:
            return None
        if self._pool is None:
            self._pool = concurrent.futures.ThreadPoolExecutor(1, "masks")
            self._executor = llg.LLExecutor()
        words = constraints[0][1].words
        if self._bitmask is None or self._bitmask.shape[1] != words:
            self._bitmask = np.zeros((self._rows, words), np.int32)
        bitmask = self._bitmask
        pairs = [(c.matcher, row) for row, c in constraints]
        return self._pool.submit(self._fill, pairs, bitmask)

    def _fill(self, pairs: list[tuple[Any, int]], bitmask: np.ndarray) -> np.ndarray:
        llg_numpy.fill_next_token_bitmask_par(self._executor, pairs, bitmask)
        return bitmask

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False)
