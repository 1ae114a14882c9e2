"""Request validation, declared once and shared by both protocols."""

import re

import pytest

from tiger_grpc.api.errors import InvalidArgumentError
from tiger_grpc.api.params import ChatMessage, GuideParams, validated
from tiger_grpc.api.wire import params_from_pb, params_to_pb

MESSAGES = [{"role": "user", "content": "hi"}]


def parse(body):
    return validated(GuideParams, body)


def body(**fields):
    return {"model": "m", "messages": MESSAGES, **fields}


def test_minimal_body_gets_defaults() -> None:
    p = parse(body())
    assert p == GuideParams(model="m", messages=(ChatMessage("user", "hi"),))
    # Sampling left unset: the model's defaults apply (SamplingParams.of).
    assert p.temperature is None and p.top_p is None and p.top_k is None
    assert not p.stream


def test_integers_follow_json_schema() -> None:
    """5.0 is the integer 5 in JSON Schema (the OpenAPI document's language); 5.5 is
    not."""
    assert parse(body(max_tokens=5.0, seed=7.0)).max_tokens == 5
    with pytest.raises(InvalidArgumentError, match="`max_tokens` must be an integer"):
        parse(body(max_tokens=5.5))


def test_unknown_fields_are_tolerated() -> None:
    assert parse(body(something_new=1)).model == "m"


@pytest.mark.parametrize(
    ("fields", "field_name"),
    [
        ({"stream": "yes"}, "stream"),
        ({"max_tokens": 1.5}, "max_tokens"),
        ({"max_tokens": True}, "max_tokens"),
        ({"seed": "42"}, "seed"),
        ({"temperature": "hot"}, "temperature"),
        ({"top_k": 2.5}, "top_k"),
        ({"stop_sequences": "x"}, "stop_sequences"),
        ({"stop_sequences": [1]}, "stop_sequences"),
        ({"model": 3}, "model"),
        ({"messages": "hi"}, "messages"),
        ({"messages": [{"role": "user"}]}, "messages[0].content"),
        ({"messages": [{"role": 1, "content": "x"}]}, "messages[0].role"),
        ({"messages": ["x"]}, "messages[0]"),
    ],
)
def test_wrong_types_are_rejected_not_coerced(fields, field_name) -> None:
    with pytest.raises(InvalidArgumentError, match=re.escape(f"`{field_name}`")):
        parse(body(**fields))


@pytest.mark.parametrize(
    ("fields", "needle"),
    [
        ({"messages": []}, "at least one message"),
        ({"messages": [{"role": "robot", "content": "x"}]}, "system, user, assistant"),
        ({"max_tokens": 0}, "from 1 to"),
        ({"temperature": -0.1}, "from 0 to"),
        ({"top_p": 0}, "(0, 1]"),
        ({"top_p": 1.01}, "(0, 1]"),
        ({"top_k": -1}, "from 0"),
        ({"seed": -1}, "2**64"),
        ({"stop_sequences": [""]}, "1 to 256"),
        ({"model": "  "}, "non-empty"),
    ],
)
def test_out_of_range_values_name_field_and_range(fields, needle) -> None:
    with pytest.raises(InvalidArgumentError) as info:
        parse(body(**fields))
    assert needle in info.value.message


def test_required_fields() -> None:
    with pytest.raises(InvalidArgumentError, match="`model` is required"):
        parse({"messages": MESSAGES})
    with pytest.raises(InvalidArgumentError, match="`messages` is required"):
        parse({"model": "m"})
    with pytest.raises(InvalidArgumentError, match="JSON object"):
        parse([1, 2])


def test_protobuf_round_trip_keeps_unset_and_zero_apart() -> None:
    p = parse(body(temperature=0, seed=0, max_tokens=5, stop_sequences=["\n"]))
    back = params_from_pb(params_to_pb(p))
    assert back.temperature == 0.0 and back.seed == 0 and back.max_tokens == 5
    assert back.stop_sequences == ("\n",)
    unset = params_from_pb(params_to_pb(parse(body())))
    assert unset.seed is None and unset.max_tokens is None
    assert unset.temperature is None and unset.top_p is None and unset.top_k is None


def test_protobuf_requests_get_the_same_range_messages() -> None:
    request = params_to_pb(parse(body()))
    request.top_p = 2.0
    with pytest.raises(
        InvalidArgumentError, match=r"`top_p` must be a number in \(0, 1\]"
    ):
        params_from_pb(request)


def test_a_training_has_a_cap_on_its_text() -> None:
    from tiger_grpc.api.params import MAX_TRAINING_CHARS, TrainParams

    turn = {"role": "assistant", "content": "x" * (MAX_TRAINING_CHARS // 4)}
    body = {"model": "m", "output_model": "n", "examples": [{"messages": [turn]}] * 5}
    with pytest.raises(InvalidArgumentError, match="`examples` hold"):
        validated(TrainParams, body)
