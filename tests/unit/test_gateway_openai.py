"""OpenAI's routes in-process over a fake stub: the SSE framing the SDKs parse,
one finish per choice, usage only at the end, errors in OpenAI's shape, and the
translation to Tiger's request."""

from __future__ import annotations

import json

import grpc
import pytest

from tests.unit.fakes import AUTH, FakeCall, rpc_error
from tiger_grpc.pb.tiger.v1 import tiger_pb2 as pb

CHAT = {"model": "M1", "messages": [{"role": "user", "content": "hi"}]}


def delta(text: str, index: int = 0) -> pb.GenerateChunk:
    return pb.GenerateChunk(delta=pb.DeltaChunk(delta=text, index=index))


def stop(index: int, reason: int = pb.STOP_REASON_MAX_TOKENS) -> pb.GenerateChunk:
    usage = pb.Usage(duration_ms=5, input_tokens=4, output_tokens=2, cached_tokens=3)
    return pb.GenerateChunk(
        stop=pb.StopChunk(stop_reason=reason, usage=usage, index=index)
    )


def events(text: str) -> list:
    """The SSE events of a body: parsed JSON, or the raw marker."""
    out = []
    for block in text.split("\n\n"):
        if block.startswith("data: "):
            payload = block.removeprefix("data: ")
            out.append(payload if payload == "[DONE]" else json.loads(payload))
    return out


async def test_chat_request_becomes_tigers(gateway) -> None:
    client, tiger, _ = gateway
    body = {
        **CHAT,
        "messages": [
            {"role": "developer", "content": [{"type": "text", "text": "Be brief."}]},
            {"role": "user", "content": "hi"},
        ],
        "max_completion_tokens": 7,
        "stop": "\n",
        "n": 2,
        "logprobs": True,
        "top_logprobs": 4,
        "top_k": 5,
        "user": "u-1",
        "cache_salt": "tenant-7",
    }
    tiger.script = [delta("A"), delta("B", 1), stop(0), stop(1)]
    reply = await client.post("/v1/chat/completions", json=body, headers=AUTH)
    answer = await reply.json()
    _, request, _ = tiger.calls[-1]
    assert [(m.role, m.content) for m in request.messages] == [
        ("system", "Be brief."),
        ("user", "hi"),
    ]
    assert request.max_tokens == 7 and list(request.stop_sequences) == ["\n"]
    assert request.n == 2 and request.logprobs and request.top_logprobs == 4
    assert request.top_k == 5 and request.cache_salt == "tenant-7"

    assert answer["object"] == "chat.completion"
    assert answer["choices"][0]["message"] == {"role": "assistant", "content": "A"}
    assert [c["message"]["content"] for c in answer["choices"]] == ["A", "B"]
    assert [c["finish_reason"] for c in answer["choices"]] == ["length", "length"]
    assert answer["usage"] == {
        "prompt_tokens": 4,
        "completion_tokens": 4,
        "total_tokens": 8,
        "prompt_tokens_details": {"cached_tokens": 3},  # the prompt's, once
    }


async def test_a_chat_stream_is_framed_as_the_sdks_read_it(gateway) -> None:
    client, tiger, _ = gateway
    tiger.script = [
        pb.GenerateChunk(info=pb.InfoChunk(message="Loading model m1")),
        delta("Hé"),
        delta("llo"),
        stop(0, pb.STOP_REASON_END_TURN),
    ]
    body = {**CHAT, "stream": True, "stream_options": {"include_usage": True}}
    reply = await client.post("/v1/chat/completions", json=body, headers=AUTH)
    assert reply.headers["Content-Type"].startswith("text/event-stream")
    text = await reply.text()
    assert ": Loading model m1\n\n" in text  # a comment: SDKs skip it
    chunks = events(text)
    assert chunks[-1] == "[DONE]"
    first, *middle, finish, usage, _ = chunks
    assert first["object"] == "chat.completion.chunk"
    assert first["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert [c["choices"][0]["delta"]["content"] for c in middle] == ["Hé", "llo"]
    assert finish["choices"][0]["finish_reason"] == "stop"
    assert usage["choices"] == [] and usage["usage"]["total_tokens"] == 6
    assert all(c["usage"] is None for c in (first, *middle, finish))
    assert len({c["id"] for c in chunks[:-1]}) == 1


async def test_a_failure_mid_stream_is_one_error_event(gateway) -> None:
    client, tiger, _ = gateway
    tiger.next = FakeCall([delta("x")], rpc_error(grpc.StatusCode.UNAVAILABLE, "gone"))
    body = {**CHAT, "stream": True}
    text = await (
        await client.post("/v1/chat/completions", json=body, headers=AUTH)
    ).text()
    chunks = events(text)
    assert chunks[-1] == {
        "error": {
            "message": "gone",
            "type": "server_error",
            "param": None,
            "code": None,
        }
    }
    assert "[DONE]" not in chunks


@pytest.mark.parametrize(
    ("body", "status", "param"),
    [
        ({**CHAT, "top_p": 3}, 400, "top_p"),
        ({**CHAT, "n": 0}, 400, "n"),
        ({**CHAT, "n": 17}, 400, "n"),
        ({**CHAT, "tool_choice": "required"}, 400, "tool_choice"),
        ({**CHAT, "seed": -(2**63) - 1}, 400, "seed"),
        (
            {**CHAT, "messages": [{"role": "tool", "content": "x"}]},
            400,
            "messages[0].tool_call_id",
        ),
        (
            {**CHAT, "messages": [{"role": "robot", "content": "x"}]},
            400,
            "messages[0].role",
        ),
        ({**CHAT, "response_format": {"type": "xml"}}, 400, "response_format.type"),
        (
            {**CHAT, "response_format": {"type": "json_schema"}},
            400,
            "response_format.json_schema",
        ),
        ({**CHAT, "functions": [{"name": "f"}]}, 400, "functions"),
        (
            {
                **CHAT,
                "tools": [{"type": "function", "function": {"name": "f"}}],
                "tool_choice": {"type": "function", "function": {"name": "g"}},
            },
            400,
            "tool_choice",
        ),
        ({**CHAT, "logit_bias": {"1": 2}}, 400, "logit_bias"),
        ({"model": "M1"}, 400, "messages"),
    ],
)
async def test_errors_are_in_openais_shape(gateway, body, status, param) -> None:
    client, tiger, _ = gateway
    reply = await client.post("/v1/chat/completions", json=body, headers=AUTH)
    assert reply.status == status
    error = (await reply.json())["error"]
    assert error["param"] == param and error["type"] == "invalid_request_error"
    assert error["message"].startswith(f"`{param}`")
    assert tiger.calls == []


async def test_backend_statuses_and_auth_in_openais_shape(gateway) -> None:
    client, tiger, _ = gateway
    reply = await client.post("/v1/chat/completions", json=CHAT)
    assert reply.status == 401
    assert (await reply.json())["error"]["code"] == "invalid_api_key"
    tiger.next = FakeCall([], rpc_error(grpc.StatusCode.RESOURCE_EXHAUSTED, "full"))
    reply = await client.post("/v1/chat/completions", json=CHAT, headers=AUTH)
    assert reply.status == 429 and reply.headers["Retry-After"] == "1"
    assert (await reply.json())["error"]["type"] == "rate_limit_error"
    reply = await client.get("/v1/chat/completions", headers=AUTH)
    assert reply.status == 405 and "error" in await reply.json()


async def test_completions_echo_scores_and_fans_out_prompts(gateway) -> None:
    client, tiger, _ = gateway
    scored = pb.TokenLogprob(token_id=9, token=" sky", bytes=b" sky", logprob=-1.5)
    scored.top.add(token_id=9, token=" sky", bytes=b" sky", logprob=-1.5)
    first = pb.TokenLogprob(token_id=8, token="The", bytes=b"The")
    tiger.script = [
        pb.GenerateChunk(prompt=pb.PromptChunk(tokens=[first, scored])),
        stop(0),
    ]
    body = {
        "model": "M1",
        "prompt": ["The sky", "The sky"],
        "max_tokens": 0,
        "echo": True,
        "logprobs": 1,
    }
    answer = await (
        await client.post("/v1/completions", json=body, headers=AUTH)
    ).json()
    requests = [call[1] for call in tiger.calls]
    assert [r.prompt for r in requests] == ["The sky", "The sky"]
    assert all(r.prompt_logprobs and r.max_tokens == 0 for r in requests)
    for choice in answer["choices"]:
        assert choice["text"] == "The sky"
        assert choice["logprobs"] == {
            "tokens": ["The", " sky"],
            "token_logprobs": [None, -1.5],
            "top_logprobs": [None, {" sky": -1.5}],
            "text_offset": [0, 3],
        }
    assert answer["usage"]["prompt_tokens"] == 8


async def test_models_answer_in_both_shapes(gateway) -> None:
    client, _, _ = gateway
    body = await (await client.get("/v1/models", headers=AUTH)).json()
    assert body["object"] == "list" and body["default_model"] == "m1"
    assert body["data"][0]["object"] == "model" and body["data"][0]["id"] == "m1"
    assert body["models"][0]["id"] == "m1"  # what the CLI and playground read
    one = await (await client.get("/v1/models/M1", headers=AUTH)).json()
    assert one == body["data"][0]
    reply = await client.get("/v1/models/m2", headers=AUTH)
    error = (await reply.json())["error"]
    assert reply.status == 404 and error["code"] == "model_not_found"
    assert error["param"] == "model" and "'m2'" in error["message"]
    assert (await client.get("/v1/models/m1")).status == 401


async def test_what_openai_allows_and_tiger_can_honour_is_accepted(gateway) -> None:
    """A negative seed (OpenAI's is signed) keeps its bits; `tool_choice: auto`
    without tools asks for nothing."""
    client, tiger, _ = gateway
    tiger.script = [delta("A"), stop(0)]
    body = {**CHAT, "seed": -1, "tool_choice": "auto"}
    reply = await client.post("/v1/chat/completions", json=body, headers=AUTH)
    assert reply.status == 200
    _, request, _ = tiger.calls[-1]
    assert request.seed == 2**64 - 1
