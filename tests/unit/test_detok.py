"""UTF-8-safe incremental detokenizing with the real byte-level tokenizer."""

import pytest

from tiger_grpc.engine.detok import REPLACEMENT, IncrementalDetokenizer

TEXTS = [
    "Plain ASCII text, with punctuation!",
    "Emoji: 😀🎉👍🏽 and a family 👨‍👩‍👧",
    "中文测试：你好，世界。日本語もあります。",
    "Accents: café, naïve, Ångström, crème brûlée.",
    "Mixed 🙂 中 é\nnew lines\tand tabs",
]


@pytest.mark.parametrize("text", TEXTS)
def test_deltas_are_whole_characters_and_add_up(tokenizer, text: str) -> None:
    ids = tokenizer.encode(text, add_special_tokens=False)
    detok = IncrementalDetokenizer(tokenizer)
    deltas = [detok.add(i) for i in ids]
    assert all(REPLACEMENT not in d for d in deltas)
    assert "".join(deltas) == tokenizer.decode(ids)
    assert "".join(deltas) == text


def test_multibyte_characters_do_split_across_tokens(tokenizer) -> None:
    """The case under test is real: some emoji take several tokens."""
    ids = tokenizer.encode("😀", add_special_tokens=False)
    assert len(ids) > 1
    assert REPLACEMENT in tokenizer.decode(ids[:1])


def test_incomplete_character_at_the_end_is_dropped(tokenizer) -> None:
    ids = tokenizer.encode("ok 😀", add_special_tokens=False)
    detok = IncrementalDetokenizer(tokenizer)
    text = "".join(detok.add(i) for i in ids[:-1])
    assert REPLACEMENT not in text
    assert text in ("ok", "ok ")


def test_special_tokens_are_never_text(tokenizer) -> None:
    detok = IncrementalDetokenizer(tokenizer)
    im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert detok.add(im_end) == ""
