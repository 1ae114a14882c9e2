"""Generation controls end to end: seeds, stop sequences, UTF-8, context limits."""

from __future__ import annotations

import json
import re

import aiohttp
import grpc
import pytest

from tests.helpers import API_KEY, TINY_MODEL_ID, Process
from tiger_grpc.engine.detok import REPLACEMENT
from tiger_grpc.models.embedded import DEFAULT_MODEL_ID
from tiger_grpc.pb.tiger.v1 import tiger_pb2 as pb
from tiger_grpc.pb.tiger.v1 import tiger_pb2_grpc as pb_grpc

pytestmark = pytest.mark.e2e
AUTH = (("authorization", f"Bearer {API_KEY}"),)
QUESTION = [
    {"role": "user", "content": "Why is the sky blue? Answer in two sentences."}
]


async def http_generate(base_url: str, **payload) -> tuple[int, list[dict]]:
    """Streams a request; returns the status and the parsed chunks (or error body)."""
    async with aiohttp.ClientSession(
        headers={"Authorization": f"Bearer {API_KEY}"}
    ) as s:
        async with s.post(
            f"{base_url}/v1/generate_response", json={"stream": True, **payload}
        ) as reply:
            lines = [json.loads(line) async for line in reply.content if line.strip()]
            return reply.status, lines


def text_of(chunks: list[dict]) -> str:
    return "".join(c["delta"] for c in chunks if c["type"] == "delta")


async def test_same_seed_same_text_different_seed_different(base_url: str) -> None:
    req = {
        "model": DEFAULT_MODEL_ID,
        "messages": QUESTION,
        "max_tokens": 24,
        "temperature": 1.0,
        "top_p": 0.95,
        "top_k": 50,
    }
    _, a = await http_generate(base_url, **req, seed=11)
    _, b = await http_generate(base_url, **req, seed=11)
    _, c = await http_generate(base_url, **req, seed=12)
    assert text_of(a) == text_of(b)
    assert text_of(a) != text_of(c)


async def test_grpc_and_http_give_the_same_seeded_text(
    base_url: str, backend: Process
) -> None:
    _, chunks = await http_generate(
        base_url, model=DEFAULT_MODEL_ID, messages=QUESTION, max_tokens=16, seed=5
    )
    async with grpc.aio.insecure_channel(f"127.0.0.1:{backend.port}") as channel:
        stub = pb_grpc.TigerStub(channel)
        request = pb.GenerateRequest(
            model=DEFAULT_MODEL_ID,
            max_tokens=16,
            seed=5,
            messages=[
                pb.Message(role=m["role"], content=m["content"]) for m in QUESTION
            ],
        )
        deltas = [
            c.delta.delta
            async for c in stub.Generate(request, metadata=AUTH)
            if c.HasField("delta")
        ]
    assert "".join(deltas) == text_of(chunks)


async def test_stop_sequence_inside_two_tokens_cuts_exactly(base_url: str) -> None:
    req = {
        "model": DEFAULT_MODEL_ID,
        "messages": QUESTION,
        "temperature": 0,
        "max_tokens": 60,
    }
    _, chunks = await http_generate(base_url, **req)
    deltas = [c["delta"] for c in chunks if c["type"] == "delta"]
    full = "".join(deltas)
    # A stop string that starts inside one token and ends inside the next.
    position = 0
    for i, (left, right) in enumerate(zip(deltas, deltas[1:], strict=False)):
        start = position + len(left) - 2
        stop = left[-2:] + right[:2]
        position += len(left)
        if i >= 1 and len(left) >= 2 and len(right) >= 2 and full.find(stop) == start:
            break
    else:
        pytest.fail(f"no usable token pair in {deltas}")
    status, cut = await http_generate(base_url, **req, stop_sequences=[stop])
    assert status == 200
    assert text_of(cut) == full[:start]
    assert cut[-1]["type"] == "stop" and cut[-1]["stop_reason"] == "stop_sequence"
    assert not any(stop in c.get("delta", "") for c in cut)
    async with aiohttp.ClientSession(
        headers={"Authorization": f"Bearer {API_KEY}"}
    ) as s:
        async with s.post(
            f"{base_url}/v1/generate_response", json={**req, "stop_sequences": [stop]}
        ) as reply:
            message = await reply.json()
    assert message["content"] == full[:start]
    assert message["stop_reason"] == "stop_sequence"


@pytest.mark.parametrize(
    "prompt",
    [
        "Reply with five emoji and nothing else: 😀🎉🚀🌟🐍",
        "请用中文回答：天空为什么是蓝色的？",
        "Écris une phrase en français avec des accents : é, è, à, ç.",
    ],
)
async def test_multibyte_text_streams_without_broken_characters(
    base_url: str, prompt
) -> None:
    req = {
        "model": DEFAULT_MODEL_ID,
        "messages": [{"role": "user", "content": prompt}],
        "temperature": 0.7,
        "seed": 3,
        "max_tokens": 40,
    }
    status, chunks = await http_generate(base_url, **req)
    assert status == 200
    deltas = [c["delta"] for c in chunks if c["type"] == "delta"]
    assert deltas and all(REPLACEMENT not in d for d in deltas)
    async with aiohttp.ClientSession(
        headers={"Authorization": f"Bearer {API_KEY}"}
    ) as s:
        async with s.post(
            f"{base_url}/v1/generate_response", json={**req, "stream": False}
        ) as reply:
            assert (await reply.json())["content"] == "".join(deltas)


async def test_system_message_goes_through_the_chat_template(base_url: str) -> None:
    messages = [
        {
            "role": "system",
            "content": "You are a pirate. Always answer in pirate speak.",
        },
        {"role": "user", "content": "Who are you?"},
        {"role": "assistant", "content": "Arr, I be a pirate!"},
        {"role": "user", "content": "Say it again."},
    ]
    _, with_system = await http_generate(
        base_url, model=DEFAULT_MODEL_ID, messages=messages, temperature=0, max_tokens=4
    )
    _, without = await http_generate(
        base_url,
        model=DEFAULT_MODEL_ID,
        messages=messages[1:],
        temperature=0,
        max_tokens=4,
    )
    # The template's default system prompt is replaced by ours: compare prompt sizes.
    assert (
        with_system[-1]["usage"]["input_tokens"] != without[-1]["usage"]["input_tokens"]
    )


async def test_max_tokens_is_clamped_to_the_context(base_url: str) -> None:
    filler = "hello " * 4000  # about 4000 tokens for a 4096-token context
    status, chunks = await http_generate(
        base_url,
        model=TINY_MODEL_ID,
        messages=[{"role": "user", "content": filler}],
        max_tokens=1000,
        temperature=0,
    )
    assert status == 200, chunks
    stop = chunks[-1]
    assert stop["stop_reason"] == "max_tokens"
    assert stop["usage"]["input_tokens"] + stop["usage"]["output_tokens"] == 4096


async def test_a_prompt_that_does_not_fit_is_a_400(base_url: str) -> None:
    filler = "hello " * 5000
    status, body = await http_generate(
        base_url, model=TINY_MODEL_ID, messages=[{"role": "user", "content": filler}]
    )
    assert status == 400
    message = body[0]["message"]
    size = int(re.search(r"the prompt is (\d+) tokens", message).group(1))
    assert size > 4095 and "at most 4095 prompt tokens" in message
