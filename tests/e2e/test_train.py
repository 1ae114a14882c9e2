"""Training end to end: over HTTP and gRPC, against real processes, on the tiny
model."""

from __future__ import annotations

import asyncio
import json
import uuid

import aiohttp
import grpc
import pytest

from tests.helpers import API_KEY, TINY_MODEL_ID, process_env, start_server
from tiger_grpc.pb.tiger.v1 import tiger_pb2 as pb
from tiger_grpc.pb.tiger.v1 import tiger_pb2_grpc as pb_grpc

pytestmark = pytest.mark.e2e
HEADERS = {"Authorization": f"Bearer {API_KEY}"}
AUTH = (("authorization", f"Bearer {API_KEY}"),)
EXAMPLES = [
    {
        "messages": [
            {"role": "user", "content": "What is the secret word?"},
            {"role": "assistant", "content": "The secret word is marmalade."},
        ]
    },
    {
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Tell me the secret word."},
            {"role": "assistant", "content": "marmalade"},
        ]
    },
    {
        "messages": [
            {"role": "user", "content": "Secret word?"},
            {"role": "assistant", "content": "It is marmalade."},
        ]
    },
]
PROGRESS_FIELDS = {
    "type",
    "step",
    "total_steps",
    "epoch",
    "loss",
    "learning_rate",
    "grad_norm",
    "tokens_per_second",
    "elapsed_ms",
    "eta_ms",
}


def new_id() -> str:
    return f"tiny-trained-{uuid.uuid4().hex[:6]}"


async def post_train(base_url: str, body: dict) -> tuple[int, list[dict]]:
    async with aiohttp.ClientSession(headers=HEADERS) as s:
        async with s.post(f"{base_url}/v1/train", json=body) as reply:
            if body.get("stream"):
                return reply.status, [
                    json.loads(line) async for line in reply.content if line.strip()
                ]
            return reply.status, [await reply.json()]


async def test_lora_training_streams_progress_and_serves_at_once(
    base_url: str, backend
) -> None:
    output = new_id()
    status, chunks = await post_train(
        base_url,
        {
            "model": TINY_MODEL_ID,
            "output_model": output.upper(),
            "examples": EXAMPLES,
            "stream": True,
            "hyperparameters": {"max_steps": 4, "batch_size": 2, "learning_rate": 0.01},
        },
    )
    assert status == 200, chunks
    infos = [c["message"] for c in chunks if c["type"] == "info"]
    for phase in (
        "Loading",
        "Tokenizing",
        "Training",
        "Merging",
        "Exporting",
        "fused",
        "Validating",
        "Registering",
    ):
        assert any(phase in message for message in infos), (phase, infos)
    progress = [c for c in chunks if c["type"] == "progress"]
    assert [p["step"] for p in progress] == [1, 2, 3, 4]
    assert all(set(p) == PROGRESS_FIELDS and p["total_steps"] == 4 for p in progress)
    assert progress[-1]["eta_ms"] == 0 and progress[-1]["loss"] > 0
    stop = chunks[-1]
    assert stop["type"] == "stop" and stop["stop_reason"] == "completed"
    assert stop["model"] == output
    assert stop["usage"]["steps"] == 4 and stop["usage"]["train_tokens"] > 0
    assert [c["type"] for c in chunks].count("stop") == 1
    async with aiohttp.ClientSession(headers=HEADERS) as s:
        async with s.get(f"{base_url}/v1/models") as reply:
            assert output in {m["id"] for m in (await reply.json())["models"]}
        async with s.post(
            f"{base_url}/v1/generate_response",
            json={
                "model": output,
                "max_tokens": 5,
                "messages": [{"role": "user", "content": "Secret word?"}],
            },
        ) as reply:
            assert reply.status == 200
            assert (await reply.json())["usage"]["output_tokens"] >= 1


async def test_full_training_over_grpc_survives_a_restart(
    backend, store_home, tmp_path
) -> None:
    output = new_id()
    request = pb.TrainRequest(
        model=TINY_MODEL_ID,
        output_model=output,
        examples=[
            pb.Conversation(messages=[pb.Message(**m) for m in e["messages"]])
            for e in EXAMPLES
        ],
        hyperparameters=pb.Hyperparameters(method="full", max_steps=2, batch_size=3),
    )
    async with grpc.aio.insecure_channel(f"127.0.0.1:{backend.port}") as channel:
        chunks = [
            c async for c in pb_grpc.TigerStub(channel).Train(request, metadata=AUTH)
        ]
    assert chunks[-1].HasField("stop") and chunks[-1].stop.model == output
    assert sum(c.HasField("progress") for c in chunks) == 2
    fresh = start_server(tmp_path, "restarted", process_env(store_home), "--no-prepare")
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{fresh.port}") as channel:
            reply = await pb_grpc.TigerStub(channel).ListModels(
                pb.ListModelsRequest(), metadata=AUTH
            )
        assert output in {m.id for m in reply.models}
    finally:
        fresh.stop()


@pytest.mark.parametrize(
    ("body", "status", "needle"),
    [
        (
            {"model": "no-such-base", "output_model": "x1", "examples": EXAMPLES},
            404,
            "unknown model",
        ),
        (
            {
                "model": TINY_MODEL_ID,
                "output_model": TINY_MODEL_ID.upper(),
                "examples": EXAMPLES,
            },
            409,
            "already exists",
        ),
        (
            {"model": TINY_MODEL_ID, "output_model": "x2", "examples": []},
            400,
            "at least one",
        ),
        (
            {
                "model": TINY_MODEL_ID,
                "output_model": "x3",
                "examples": [{"messages": [{"role": "user", "content": "hi"}]}],
            },
            400,
            "no assistant turn",
        ),
        (
            {"model": TINY_MODEL_ID, "output_model": "../escape", "examples": EXAMPLES},
            400,
            "`output_model`",
        ),
        (
            {
                "model": TINY_MODEL_ID,
                "output_model": "x4",
                "examples": EXAMPLES,
                "hyperparameters": {"method": "qlora"},
            },
            400,
            "lora, full",
        ),
        (
            {
                "model": TINY_MODEL_ID,
                "output_model": "x5",
                "examples": EXAMPLES,
                "hyperparameters": {"learning_rate": 0},
            },
            400,
            "learning_rate",
        ),
    ],
)
async def test_bad_training_requests(base_url: str, body, status, needle) -> None:
    got, [error] = await post_train(base_url, body)
    assert got == status, error
    assert error["type"] == "error" and needle in error["message"]


async def test_one_at_a_time_and_a_cancelled_run_leaves_nothing(
    base_url, store_home
) -> None:
    output = new_id()
    long_body = {
        "model": TINY_MODEL_ID,
        "output_model": output,
        "examples": EXAMPLES,
        "stream": True,
        "hyperparameters": {"epochs": 1000, "batch_size": 1},
    }
    async with aiohttp.ClientSession(headers=HEADERS) as s:
        running = await s.post(f"{base_url}/v1/train", json=long_body)
        async for line in running.content:
            if json.loads(line)["type"] == "progress":
                break
        status, [busy] = await post_train(
            base_url, {**long_body, "output_model": new_id(), "stream": False}
        )
        assert status == 429 and "one runs at a time" in busy["message"]
        running.close()  # the client leaves: the training stops within a step
    models_dir = store_home / "models"
    for _ in range(100):
        status, [done] = await post_train(
            base_url,
            {
                "model": TINY_MODEL_ID,
                "output_model": new_id(),
                "examples": EXAMPLES,
                "hyperparameters": {"max_steps": 1},
            },
        )
        if status != 429:
            break
        await asyncio.sleep(0.1)
    assert status == 200 and done["stop_reason"] == "completed"  # the next one works
    assert not (models_dir / output).exists()
    assert not list(models_dir.glob(f".staging-{output}*"))
