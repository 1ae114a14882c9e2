"""Output programs can rely on, on the real gateway and server with the embedded
model: JSON schemas (the official `openai` SDK's `parse`), tool calls (a round
trip through the SDK, streamed and not), Tiger's own API and gRPC, and a
property-based test: every output that ends by itself validates against its
generated schema, greedy and at temperature 1.0."""

from __future__ import annotations

import json
import re
from concurrent.futures import ThreadPoolExecutor

import jsonschema_rs
import openai
import pytest
import requests
from hypothesis import HealthCheck, given, settings
from pydantic import BaseModel, Field

from tests.helpers import API_KEY, DEFAULT_MODEL_ID
from tiger_grpc.api.toolcalls import read_all
from tiger_grpc.testing.schemas import SCHEMAS

pytestmark = pytest.mark.e2e
AUTH = {"Authorization": f"Bearer {API_KEY}"}


@pytest.fixture(scope="module")
def client(base_url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{base_url}/v1", api_key=API_KEY, max_retries=0)


class City(BaseModel):
    name: str
    country: str
    population: int = Field(ge=0)
    landmarks: list[str] = Field(max_length=3)


WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The current weather in a city",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string", "maxLength": 40},
                "unit": {"enum": ["celsius", "fahrenheit"]},
            },
            "required": ["city", "unit"],
            "additionalProperties": False,
        },
    },
}
ASK = [{"role": "user", "content": "What is the weather in Paris, in celsius?"}]


def test_the_sdks_parse_returns_the_pydantic_object(client) -> None:
    reply = client.chat.completions.parse(
        model=DEFAULT_MODEL_ID,
        messages=[{"role": "user", "content": "Describe Paris as JSON."}],
        response_format=City,
        temperature=0,
        max_tokens=200,
    )
    (choice,) = reply.choices
    assert choice.finish_reason == "stop"
    city = choice.message.parsed
    assert isinstance(city, City) and city.name and len(city.landmarks) <= 3
    assert City.model_validate_json(choice.message.content) == city


def test_a_tool_round_trip_through_the_sdk(client) -> None:
    first = client.chat.completions.create(
        model=DEFAULT_MODEL_ID,
        messages=ASK,
        tools=[WEATHER],
        tool_choice="required",
        parallel_tool_calls=False,
        temperature=0,
        max_tokens=100,
    )
    (choice,) = first.choices
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content is None
    (call,) = choice.message.tool_calls
    assert call.type == "function" and call.id.startswith("call_")
    assert call.function.name == "get_weather"
    arguments = json.loads(call.function.arguments)
    schema = WEATHER["function"]["parameters"]
    assert jsonschema_rs.validator_for(schema).is_valid(arguments)

    result = {"role": "tool", "tool_call_id": call.id, "content": '{"temp": 18}'}
    final = client.chat.completions.create(
        model=DEFAULT_MODEL_ID,
        messages=[*ASK, choice.message, result],
        tools=[WEATHER],
        temperature=0,
        max_tokens=60,
    )
    (answer,) = final.choices
    print(f"final answer: {answer.message}")
    assert answer.message.tool_calls is None and answer.message.content
    assert answer.finish_reason in ("stop", "length")
    # The tool's result is in the prompt the model read.
    assert final.usage.prompt_tokens > first.usage.prompt_tokens


def test_streamed_tool_calls_come_as_openai_streams_them(client) -> None:
    """The name first, then fragments of the arguments; the SDK's stream helper
    puts them together, and they match the answer that is not streamed."""
    fields = {
        "model": DEFAULT_MODEL_ID,
        "messages": ASK,
        "tools": [WEATHER],
        "tool_choice": {"type": "function", "function": {"name": "get_weather"}},
        "parallel_tool_calls": False,
        "temperature": 0,
        "max_tokens": 100,
    }
    whole = client.chat.completions.create(**fields)
    chunks = list(client.chat.completions.create(**fields, stream=True))
    calls = [c.choices[0].delta.tool_calls for c in chunks if c.choices]
    calls = [c[0] for c in calls if c]
    head, *fragments = calls
    assert head.id and head.function.name == "get_weather" and head.index == 0
    assert fragments and all(
        f.id is None and f.function.name is None for f in fragments
    )
    arguments = "".join(f.function.arguments for f in fragments)
    assert arguments == whole.choices[0].message.tool_calls[0].function.arguments
    assert chunks[-1].choices[0].finish_reason == "tool_calls"
    with client.chat.completions.stream(**fields) as stream:
        done = stream.get_final_completion()
    (call,) = done.choices[0].message.tool_calls
    assert call.function.arguments == arguments


def test_an_unsupported_schema_feature_is_a_400_naming_it(base_url) -> None:
    body = {
        "model": DEFAULT_MODEL_ID,
        "messages": ASK,
        "stream": True,
        "response_format": {
            "type": "json_schema",
            "json_schema": {"name": "x", "schema": {"not": {"type": "string"}}},
        },
    }
    reply = requests.post(f"{base_url}/v1/chat/completions", json=body, headers=AUTH)
    assert reply.status_code == 400
    error = reply.json()["error"]
    assert "not" in error["message"] and "cannot be enforced" in error["message"]


def test_tigers_own_api_and_the_cut_output(base_url) -> None:
    schema = {
        "type": "object",
        "properties": {"answer": {"enum": ["yes", "no"]}, "why": {"type": "string"}},
        "required": ["answer", "why"],
    }
    body = {
        "model": DEFAULT_MODEL_ID,
        "messages": [{"role": "user", "content": "Is the sky blue?"}],
        "temperature": 0,
        "response_format": {
            "type": "json_schema",
            "json_schema": {"name": "reply", "schema": schema},
        },
    }
    url = f"{base_url}/v1/generate_response"
    whole = requests.post(url, json={**body, "max_tokens": 300}, headers=AUTH).json()
    assert whole["stop_reason"] == "end_turn", whole
    assert jsonschema_rs.validator_for(schema).is_valid(json.loads(whole["content"]))
    cut = requests.post(url, json={**body, "max_tokens": 3}, headers=AUTH).json()
    assert cut["stop_reason"] == "max_tokens"
    assert whole["content"].startswith(cut["content"])
    choice = {**body, "response_format": {"type": "choice", "choice": ["maybe", "no"]}}
    picked = requests.post(url, json=choice, headers=AUTH).json()
    assert picked["content"] in ("maybe", "no") and picked["stop_reason"] == "end_turn"


TALLY = {"finished": 0, "valid": 0, "cut": 0}


@settings(
    max_examples=24,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(schema=SCHEMAS)
def test_every_finished_output_validates(base_url, schema) -> None:
    """One greedy answer and three at temperature 1.0 (one request each, in the
    batch together)."""
    validator = jsonschema_rs.validator_for(schema)

    def answer(temperature: float) -> dict:
        body = {
            "model": DEFAULT_MODEL_ID,
            "messages": [{"role": "user", "content": "Fill in this form as JSON."}],
            "temperature": temperature,
            "n": 1 if temperature == 0 else 3,
            "seed": 7,
            "max_tokens": 160,
            "response_format": {
                "type": "json_schema",
                "json_schema": {"name": "form", "schema": schema},
            },
        }
        url = f"{base_url}/v1/chat/completions"
        reply = requests.post(url, json=body, headers=AUTH, timeout=120)
        assert reply.status_code == 200, reply.text
        return reply.json()

    with ThreadPoolExecutor(2) as pool:
        replies = list(pool.map(answer, (0.0, 1.0)))
    for choice in (c for r in replies for c in r["choices"]):
        text = choice["message"]["content"]
        if choice["finish_reason"] == "length":
            TALLY["cut"] += 1
            continue
        assert choice["finish_reason"] == "stop"
        TALLY["finished"] += 1
        assert validator.is_valid(json.loads(text)), (schema, text)
        TALLY["valid"] += 1


def test_the_property_run_finished_most_outputs() -> None:
    """Runs after the property test: most outputs end by themselves, so its
    checks judged something."""
    print(f"schema outputs: {TALLY}")
    assert TALLY["finished"] >= 2 * TALLY["cut"] and TALLY["valid"] == TALLY["finished"]


async def test_grpc_takes_the_format_and_the_tools(backend) -> None:
    """With the stub `make proto` generates: a regex format, a schema the server
    refuses (INVALID_ARGUMENT, before any chunk), and a required tool call."""
    import grpc

    from tiger_grpc.pb.tiger.v1 import tiger_pb2 as pb
    from tiger_grpc.pb.tiger.v1 import tiger_pb2_grpc as pb_grpc

    metadata = (("authorization", f"Bearer {API_KEY}"),)
    ask = [pb.Message(role="user", content="Give me a phone number.")]
    async with grpc.aio.insecure_channel(f"127.0.0.1:{backend.port}") as channel:
        stub = pb_grpc.TigerStub(channel)
        fmt = pb.ResponseFormat(type="regex", regex=r"\d{3}-\d{4}")
        request = pb.GenerateRequest(
            model=DEFAULT_MODEL_ID, messages=ask, response_format=fmt, temperature=1.0
        )
        chunks = [c async for c in stub.Generate(request, metadata=metadata)]
        text = "".join(c.delta.delta for c in chunks if c.HasField("delta"))
        assert re.fullmatch(r"\d{3}-\d{4}", text), text
        assert chunks[-1].stop.stop_reason == pb.STOP_REASON_END_TURN

        bad = pb.JsonSchema(name="x", schema='{"type": "object", "not": {}}')
        request = pb.GenerateRequest(
            model=DEFAULT_MODEL_ID,
            messages=ask,
            response_format=pb.ResponseFormat(type="json_schema", json_schema=bad),
        )
        with pytest.raises(grpc.aio.AioRpcError) as info:
            [c async for c in stub.Generate(request, metadata=metadata)]
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "not" in (info.value.details() or "")

        lookup = {
            "type": "object",
            "properties": {"q": {"type": "string", "maxLength": 30}},
            "required": ["q"],
            "additionalProperties": False,
        }
        tool = pb.Tool(name="lookup", parameters=json.dumps(lookup))
        request = pb.GenerateRequest(
            model=DEFAULT_MODEL_ID,
            messages=ask,
            tools=[tool],
            tool_choice="required",
            parallel_tool_calls=False,
            temperature=0,
        )
        chunks = [c async for c in stub.Generate(request, metadata=metadata)]
    assert chunks[-1].stop.stop_reason == pb.STOP_REASON_END_TURN
    text = "".join(c.delta.delta for c in chunks if c.HasField("delta"))
    content, calls = read_all(text)
    assert content is None and [name for name, _ in calls] == ["lookup"]
    assert isinstance(json.loads(calls[0][1]), dict)


async def test_the_python_client_takes_a_format(backend) -> None:
    from tiger_grpc.client import AsyncTigerClient

    async with AsyncTigerClient(f"127.0.0.1:{backend.port}", api_key=API_KEY) as tiger:
        done = await tiger.complete(
            [{"role": "user", "content": "Yes or no?"}],
            response_format={"type": "choice", "choice": ["yes", "no"]},
            temperature=1.0,
        )
    assert done.text in ("yes", "no")
