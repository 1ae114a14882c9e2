"""Sampling and stopping, without any server."""

import numpy as np
import pytest

from tiger_grpc.api.events import StopReason
from tiger_grpc.engine.sampling import Sampler, SamplingParams
from tiger_grpc.engine.stopping import StopSequenceMatcher, TokenStopper

LOGITS = np.log(np.array([0.1, 0.5, 0.3, 0.1], dtype=np.float32))


def draws(params: SamplingParams, n: int = 400) -> list[int]:
    sampler = Sampler(params)
    return [sampler(LOGITS) for _ in range(n)]


def test_greedy_is_argmax() -> None:
    assert set(draws(SamplingParams(temperature=0.0), 20)) == {1}


def test_same_seed_same_draws_different_seed_different() -> None:
    a = draws(SamplingParams(seed=7))
    assert a == draws(SamplingParams(seed=7))
    assert a != draws(SamplingParams(seed=8))


def test_temperature_one_follows_the_distribution() -> None:
    counts = np.bincount(draws(SamplingParams(seed=1), 4000), minlength=4) / 4000
    assert np.allclose(counts, [0.1, 0.5, 0.3, 0.1], atol=0.03)


def test_top_k_keeps_only_the_k_most_likely() -> None:
    assert set(draws(SamplingParams(top_k=2, seed=3))) == {1, 2}


def test_top_p_keeps_the_smallest_nucleus() -> None:
    assert set(draws(SamplingParams(top_p=0.5, seed=3))) == {1}
    assert set(draws(SamplingParams(top_p=0.75, seed=3))) == {1, 2}


def test_token_stopper() -> None:
    stop = TokenStopper([2, 0], max_tokens=3)
    assert stop(5, 1) is None
    assert stop(2, 1) is StopReason.END_TURN
    assert stop(5, 3) is StopReason.MAX_TOKENS
    assert stop(0, 3) is StopReason.END_TURN


def feed_all(matcher: StopSequenceMatcher, pieces: list[str]) -> tuple[list[str], bool]:
    out = []
    for piece in pieces:
        text, matched = matcher.feed(piece)
        out.append(text)
        if matched:
            return out, True
    out.append(matcher.flush())
    return out, False


@pytest.mark.parametrize(
    ("pieces", "expected"),
    [
        (["Hello wor", "ld. STOP here"], "Hello world. "),
        (["Hello S", "T", "OP"], "Hello "),
        (["abcST", "OPxyz"], "abc"),
        (["no stop here"], "no stop here"),
        (["S", "T", "O", "X"], "STOX"),
        (["end##"], "end"),
    ],
)
def test_stop_sequences_cut_exactly_across_pieces(pieces, expected) -> None:
    out, _ = feed_all(StopSequenceMatcher(["STOP", "##"]), pieces)
    assert "".join(out) == expected


def test_possible_stop_prefix_is_held_back_until_known() -> None:
    matcher = StopSequenceMatcher(["STOP"])
    assert matcher.feed("abc ST") == ("abc ", False)
    assert matcher.feed("ART") == ("START", False)


def test_first_occurrence_wins_among_several() -> None:
    out, matched = feed_all(StopSequenceMatcher(["c", "ab"]), ["xab c"])
    assert matched and "".join(out) == "x"


def test_unset_sampling_fields_take_the_model_defaults() -> None:
    from tiger_grpc.api.params import ChatMessage, GenerateParams

    asked = GenerateParams(model="m", messages=(ChatMessage("user", "hi"),))
    defaults = {"temperature": 0.2, "top_p": 0.9}
    assert SamplingParams.of(asked, 0, defaults) == SamplingParams(0.2, 0.9, 0)
    assert SamplingParams.of(asked) == SamplingParams(1.0, 1.0, 0)
    # What a request sets wins, zero included.
    set_ = asked.model_copy(update={"temperature": 0.0, "top_k": 5})
    assert SamplingParams.of(set_, 0, defaults) == SamplingParams(0.0, 0.9, 5)


def test_generation_config_gives_the_sampling_defaults(tmp_path) -> None:
    import json

    from tiger_grpc.models.export import sampling_defaults

    assert sampling_defaults(tmp_path) == {}
    config = {"do_sample": True, "temperature": 0.6, "top_p": 0.95, "top_k": 20}
    (tmp_path / "generation_config.json").write_text(json.dumps(config))
    assert sampling_defaults(tmp_path) == {
        "temperature": 0.6,
        "top_p": 0.95,
        "top_k": 20,
    }
    bad = {"temperature": -1, "top_p": 2, "top_k": True, "eos_token_id": 2}
    (tmp_path / "generation_config.json").write_text(json.dumps(bad))
    assert sampling_defaults(tmp_path) == {}
