"""Constrained decoding's layers on the embedded model's real tokenizer, without the
model: grammars from formats and tools, masks (one by one and a batch's, filled on
their thread), sampling under a mask from random logits (whatever the logits, the
output is valid when the grammar ends), and the tool-call reader."""

from __future__ import annotations

import json
import random

import jsonschema_rs
import numpy as np
import pytest

from tiger_grpc.api.errors import InvalidArgumentError
from tiger_grpc.api.params import GenerateParams, validated
from tiger_grpc.api.toolcalls import (
    Arguments,
    CallStart,
    Content,
    ToolCallReader,
    call_text,
    read_all,
)
from tiger_grpc.engine.chat import load_chat_tokenizer
from tiger_grpc.engine.grammar import (
    Constraint,
    MaskFiller,
    grammar_tokenizer,
    request_grammar,
)
from tiger_grpc.engine.sampling import Sampler, SamplingParams

PERSON = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 12},
        "age": {"type": "integer", "minimum": 0, "maximum": 120},
        "tags": {"type": "array", "items": {"enum": ["a", "b"]}, "maxItems": 2},
    },
    "required": ["name", "age"],
    "additionalProperties": False,
}
WEATHER = {
    "name": "get_weather",
    "parameters": {
        "type": "object",
        "properties": {"city": {"type": "string", "maxLength": 10}},
        "required": ["city"],
        "additionalProperties": False,
    },
}


@pytest.fixture(scope="module")
def chat_tokenizer(default_model_dir):
    return load_chat_tokenizer(default_model_dir / "hf")


@pytest.fixture(scope="module")
def vocabulary(chat_tokenizer):
    return grammar_tokenizer(chat_tokenizer, [2])


def test_the_vocabulary_fills_the_token_texts_log_probabilities_use(
    chat_tokenizer, vocabulary
) -> None:
    """One `TokenTexts` per tokenizer: the grammar's vocabulary read every token
    once, and log-probabilities find them made."""
    from tiger_grpc.engine.tokens import texts_of

    texts = texts_of(chat_tokenizer)
    assert texts is texts_of(chat_tokenizer)
    assert len(texts._cache) == len(chat_tokenizer)
    assert texts(9)[1] == chat_tokenizer.decode([9]).encode()


def params(**fields) -> GenerateParams:
    ask = [{"role": "user", "content": "hi"}]
    return validated(GenerateParams, {"model": "m", "messages": ask, **fields})


def schema_format(schema) -> dict:
    return {"type": "json_schema", "json_schema": {"name": "s", "schema": schema}}


def generate(chat_tokenizer, vocabulary, grammar, seed: int, limit: int = 200) -> str:
    """Samples from random logits under the grammar until it ends (or `limit`)."""
    rng = np.random.default_rng(seed)
    constraint = Constraint(vocabulary, grammar)
    sampler = Sampler(SamplingParams(temperature=1.0, seed=seed))
    tokens: list[int] = []
    for _ in range(limit):
        logits = rng.normal(0, 3, len(chat_tokenizer)).astype(np.float32)
        token = sampler(constraint.allowed(logits))
        if token == 2:  # the end of the turn, allowed only where the grammar may end
            break
        constraint.consume(token)
        tokens.append(token)
        if constraint.complete:
            break
    else:
        pytest.fail("the grammar did not end")
    return chat_tokenizer.decode(tokens)


@pytest.mark.parametrize("seed", range(6))
def test_random_logits_under_a_schema_give_valid_json(
    chat_tokenizer, vocabulary, seed
) -> None:
    grammar = request_grammar(vocabulary, params(response_format=schema_format(PERSON)))
    text = generate(chat_tokenizer, vocabulary, grammar, seed)
    assert jsonschema_rs.validator_for(PERSON).is_valid(json.loads(text)), text
    # Compact, as json.dumps writes it.
    assert json.dumps(json.loads(text), ensure_ascii=False) == text


def test_regex_and_choice(chat_tokenizer, vocabulary) -> None:
    regex = params(response_format={"type": "regex", "regex": "[0-9]{2}-[a-c]{3}"})
    text = generate(chat_tokenizer, vocabulary, request_grammar(vocabulary, regex), 1)
    assert len(text) == 6 and text[2] == "-" and text[:2].isdigit()
    choice = params(response_format={"type": "choice", "choice": ["red", "green"]})
    grammar = request_grammar(vocabulary, choice)
    assert {generate(chat_tokenizer, vocabulary, grammar, s) for s in range(8)} == {
        "red",
        "green",
    }


@pytest.mark.parametrize("seed", range(4))
def test_a_required_call_is_well_formed(chat_tokenizer, vocabulary, seed) -> None:
    request = params(tools=[WEATHER], tool_choice="required", parallel_tool_calls=False)
    text = generate(
        chat_tokenizer, vocabulary, request_grammar(vocabulary, request), seed
    )
    content, calls = read_all(text)
    assert content is None and len(calls) == 1
    name, arguments = calls[0]
    assert name == "get_weather"
    schema = WEATHER["parameters"]
    assert jsonschema_rs.validator_for(schema).is_valid(json.loads(arguments))


def test_auto_lets_text_through_and_constrains_a_call(
    chat_tokenizer, vocabulary
) -> None:
    grammar = request_grammar(vocabulary, params(tools=[WEATHER]))
    constraint = Constraint(vocabulary, grammar)
    free = "Sure, let me look."
    for token in chat_tokenizer.encode(free, add_special_tokens=False):
        constraint.consume(token)
    start = '<tool_call>\n{"name": "get_weather", "arguments": {"town"'
    ids = chat_tokenizer.encode(start, add_special_tokens=False)
    with pytest.raises(RuntimeError):
        for token in ids:
            constraint.consume(token)


def test_a_copy_starts_where_the_constraint_stands_and_goes_its_own_way(
    chat_tokenizer, vocabulary
) -> None:
    """A request's choices share one compiled grammar: each gets a copy, whose
    state is the prototype's and whose tokens are its own."""
    grammar = request_grammar(vocabulary, params(tools=[WEATHER]))
    prototype = Constraint(vocabulary, grammar)
    first, second = prototype.copy(), prototype.copy()
    assert (first.mask() == prototype.mask()).all()
    start = '<tool_call>\n{"name": "get_weather", "arguments": {"town"'
    ids = chat_tokenizer.encode(start, add_special_tokens=False)
    with pytest.raises(RuntimeError):
        for token in ids:
            first.consume(token)
    for token in chat_tokenizer.encode("Sure.", add_special_tokens=False):
        second.consume(token)  # untouched by the first copy's refusal
    assert (prototype.mask() == Constraint(vocabulary, grammar).mask()).all()


@pytest.mark.parametrize(
    ("fields", "named"),
    [
        ({"response_format": schema_format({"not": {"type": "string"}})}, "not"),
        (
            {"response_format": schema_format({"type": "string", "pattern": "(?=a)"})},
            "look-around",
        ),
        (
            {
                "tools": [{"name": "f", "parameters": {"type": "object", "not": {}}}],
                "tool_choice": "required",
            },
            "tools[0].parameters",
        ),
    ],
)
def test_what_cannot_be_enforced_is_refused_by_name(vocabulary, fields, named) -> None:
    with pytest.raises(InvalidArgumentError, match="cannot be enforced") as info:
        request_grammar(vocabulary, params(**fields))
    assert named in str(info.value)


def test_a_batchs_masks_are_each_sequences_own(chat_tokenizer, vocabulary) -> None:
    grammar = request_grammar(vocabulary, params(response_format=schema_format(PERSON)))
    ones = [Constraint(vocabulary, grammar) for _ in range(3)]
    for token in chat_tokenizer.encode('{"name": "A', add_special_tokens=False):
        ones[1].consume(token)
    filler = MaskFiller(rows=4)
    future = filler.start([(0, ones[0]), (2, ones[1]), (3, ones[2])])
    assert future is not None and filler.start([]) is None
    batch = future.result()
    for row, one in ((0, ones[0]), (2, ones[1]), (3, ones[2])):
        assert np.array_equal(batch[row], one.mask())
    assert not np.array_equal(batch[0], batch[2])
    filler.close()


def test_the_reader_gives_the_same_pieces_however_the_text_is_cut() -> None:
    arguments = '{"city": "Pa}ris\\"", "x": [1, {"a": 2}]}'
    calls = f"{call_text('get_weather', arguments)}\n{call_text('t', '{}')}"
    text = f"Let me check.\n{calls}\n"
    rng = random.Random(0)
    for _ in range(200):
        reader, pieces, i = ToolCallReader(), [], 0
        while i < len(text):
            size = rng.randint(1, 9)
            pieces += reader.feed(text[i : i + size])
            i += size
        pieces += reader.finish()
        assert "".join(p.text for p in pieces if isinstance(p, Content)) == (
            "Let me check."
        )
        assert [p.name for p in pieces if isinstance(p, CallStart)] == [
            "get_weather",
            "t",
        ]
        joined = ["", ""]
        for p in pieces:
            if isinstance(p, Arguments):
                joined[p.index] += p.text
        assert joined == [arguments, "{}"]


def test_the_reader_leaves_plain_text_and_broken_calls_as_text() -> None:
    assert read_all("a <tool ok\n") == ("a <tool ok\n", [])
    assert read_all("<tool_call>\n{not json") == ("<tool_call>\n{not json", [])
    assert read_all(call_text("f", "{}") + "\nThen text.") == (
        "Then text.",
        [("f", "{}")],
    )


def test_greedy_takes_the_best_allowed_token(vocabulary) -> None:
    """The greedy shortcut (the best token, when allowed, without masking) picks
    what the masked logits would, step after step."""
    grammar = request_grammar(vocabulary, params(response_format=schema_format(PERSON)))
    fast, masked = Constraint(vocabulary, grammar), Constraint(vocabulary, grammar)
    greedy = Sampler(SamplingParams(temperature=0.0))
    rng = np.random.default_rng(3)
    shortcuts = 0
    for _ in range(200):
        logits = rng.normal(0, 3, vocabulary.vocab_size).astype(np.float32)
        allowed = np.flatnonzero(np.isfinite(masked.allowed(logits)))
        if rng.random() < 0.5:  # the best token is an allowed one
            logits[rng.choice(allowed)] = logits.max() + 1
            shortcuts += 1
        expected = int(np.argmax(masked.allowed(logits)))
        assert fast.choose(greedy, logits) == expected
        masked.consume(expected)
        if masked.complete:
            break
    assert fast.complete and shortcuts > 3


def test_regex_slashes_and_tool_arguments_are_objects(
    chat_tokenizer, vocabulary
) -> None:
    """A regex's `/` (escaped or not) stays inside Lark's `/.../`; a function whose
    schema names no type still gets a JSON object for its arguments."""
    regex = {"type": "regex", "regex": "a\\\\/b|c/d"}
    tools = [{"name": "f", "parameters": {"properties": {"x": {"enum": [1, 2]}}}}]
    request = params(response_format=regex, tools=tools)  # auto: the lark path
    grammar = request_grammar(vocabulary, request)
    for answer in ("a\\/b", "c/d"):
        constraint = Constraint(vocabulary, grammar)
        for token in chat_tokenizer.encode(answer, add_special_tokens=False):
            constraint.consume(token)
    loose = params(tools=[{"name": "g", "parameters": {"anyOf": [{"type": "string"}]}}])
    with pytest.raises(InvalidArgumentError, match="tools\\[0\\].parameters"):
        request_grammar(
            vocabulary, loose.model_copy(update={"tool_choice": "required"})
        )
