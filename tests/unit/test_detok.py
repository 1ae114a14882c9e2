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


class SlowTokenizer:
    """A tokenizer without a `tokenizers` backend: only `decode`."""

    def __init__(self, tokenizer) -> None:
        self.decode = tokenizer.decode


class RefusingStream:
    """A `DecodeStream` that refuses its third step, as it does on an "Invalid
    prefix"."""

    def __init__(self) -> None:
        from tokenizers.decoders import DecodeStream

        self.real, self.steps = DecodeStream(skip_special_tokens=True), 0

    def step(self, backend, token_id):
        self.steps += 1
        if self.steps == 3:
            raise Exception("Invalid prefix encountered while decoding stream")
        return self.real.step(backend, token_id)


def detokenizer(tokenizer, how: str) -> IncrementalDetokenizer:
    if how == "slow":
        return IncrementalDetokenizer(SlowTokenizer(tokenizer))
    detok = IncrementalDetokenizer(tokenizer)
    if how == "refused":
        detok._stream = RefusingStream()  # type: ignore[assignment]
    return detok


@pytest.mark.parametrize("how", ["stream", "slow", "refused"])
@pytest.mark.parametrize("text", TEXTS)
def test_deltas_are_whole_characters_and_add_up(tokenizer, text: str, how) -> None:
    """With `DecodeStream`, and with the window decode that takes over from it."""
    ids = tokenizer.encode(text, add_special_tokens=False)
    detok = detokenizer(tokenizer, how)
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
