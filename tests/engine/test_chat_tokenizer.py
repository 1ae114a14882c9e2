"""The serving path's tokenizer (`tokenizers` and Jinja, no transformers) against
transformers' own, on the embedded model's files: the same ids, text, chat
prompts and special tokens."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from tiger_grpc.api.errors import InvalidArgumentError
from tiger_grpc.api.params import ChatMessage, GenerateParams
from tiger_grpc.engine.chat import ChatTokenizer
from tiger_grpc.engine.request import prompt_ids
from tiger_grpc.models.quality import HELD_OUT

SAMPLES = [
    "",
    " ",
    "hi",
    "  two  spaces\n\nand lines",
    "émojis 🦊🐯 and ünïcode: “quotes”",
    "<|im_start|>user\nhi<|im_end|>",
    "def f(x):\n    return x * 2\n",
]
CONVERSATIONS = [
    [{"role": "user", "content": "hi"}],
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "2+2?"}],
    [
        {"role": "user", "content": "a"},
        {"role": "assistant", "content": "b"},
        {"role": "user", "content": "c 🦊\n\n"},
    ],
]


@pytest.fixture(scope="module")
def ours(default_model_dir: Path) -> ChatTokenizer:
    return ChatTokenizer(default_model_dir / "hf")


def test_ids_and_text_are_transformers(tokenizer, ours) -> None:
    text = HELD_OUT.read_text()
    rng = random.Random(0)
    pieces = [
        text[rng.randrange(len(text)) :][: rng.randrange(1, 300)] for _ in range(50)
    ]
    for sample in [*SAMPLES, *pieces]:
        ids = tokenizer.encode(sample)
        assert ours.encode(sample) == ids
        for skip in (True, False):
            expected = tokenizer.decode(
                ids, skip_special_tokens=skip, clean_up_tokenization_spaces=False
            )
            assert ours.decode(ids, skip_special_tokens=skip) == expected
    assert sorted(ours.all_special_ids) == sorted(tokenizer.all_special_ids)
    assert len(ours) == len(tokenizer)


@pytest.mark.parametrize("conversation", CONVERSATIONS)
def test_chat_prompts_are_transformers(tokenizer, ours, conversation) -> None:
    for generation in (True, False):
        expected = tokenizer.apply_chat_template(
            conversation, add_generation_prompt=generation, tokenize=True
        )
        assert ours.apply_chat_template(conversation, generation) == list(expected)


def test_a_template_that_refuses_is_a_clear_error(tmp_path, default_model_dir) -> None:
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (tmp_path / name).write_bytes((default_model_dir / "hf" / name).read_bytes())
    (tmp_path / "chat_template.jinja").write_text(
        "{% if messages[0]['role'] != 'user' %}"
        "{{ raise_exception('the first turn must be the user') }}{% endif %}x"
    )
    strict = ChatTokenizer(tmp_path)
    params = GenerateParams(model="m", messages=(ChatMessage("assistant", "hi"),))
    with pytest.raises(InvalidArgumentError, match="first turn must be the user"):
        prompt_ids(strict, params)
