"""The servicer in-process, over a fake registry, trainer and importer: conversion at
the edge, the status table, auth, and cancellation, in milliseconds."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tiger_grpc.api.errors import NotFoundError, OverloadedError, UnavailableError
from tiger_grpc.api.events import (
    Delta,
    Imported,
    Info,
    Model,
    Progress,
    Stop,
    StopReason,
    Trained,
    Usage,
)
from tiger_grpc.api.params import GenerateParams
from tiger_grpc.config import ServerConfig
from tiger_grpc.pb.tiger.v1 import tiger_pb2 as pb
from tiger_grpc.pb.tiger.v1 import tiger_pb2_grpc as pb_grpc
from tiger_grpc.server.app import create_server
from tiger_grpc.server.servicer import INTERNAL_MESSAGE

KEY = "unit-key"
AUTH = (("authorization", f"Bearer {KEY}"),)
USAGE = Usage(12, 3, 2)


class FakeRegistry:
    """Plays back `script` for every generation; raises `error` after `raise_after`
    events (or before any when 0)."""

    def __init__(self) -> None:
        self.script: list = [Info("Loading"), Delta("Hi"), Delta("!")]
        self.script.append(Stop(StopReason.MAX_TOKENS, USAGE))
        self.error: Exception | None = None
        self.raise_after = 0
        self.seen: list[GenerateParams] = []
        self.closed_early = asyncio.Event()

    async def generate(self, params: GenerateParams) -> AsyncIterator:
        self.seen.append(params)
        finished = False
        try:
            for i, event in enumerate(self.script):
                if self.error is not None and i == self.raise_after:
                    raise self.error
                await asyncio.sleep(0)
                yield event
            finished = True
        finally:
            if not finished:
                self.closed_early.set()

    def models(self) -> list[Model]:
        return [Model("m1", True, "CPUExecutionProvider", 8192, "here", 1, 0, 42)]

    def knows(self, model_id: str) -> bool:
        return model_id == "m1"

    def default_model(self) -> str:
        return "m1"

    def close(self) -> None:
        pass


class FakeJobs:
    async def train(self, params) -> AsyncIterator:
        yield Info("Training")
        yield Progress(1, 1, 1.0, 0.5, 1e-3, 2.0, 100.0, 10, 0)
        yield Trained(params.output_model, 20, 64, 1)

    async def import_model(self, params) -> AsyncIterator:
        yield Info(f"Copying {params.path}")
        yield Imported(params.id, 30)


@pytest.fixture
async def served(tmp_path: Path):
    registry = FakeRegistry()
    config = ServerConfig(home=tmp_path, api_key=KEY, host="127.0.0.1", port=0)
    jobs = FakeJobs()
    tiger = await create_server(config, registry, jobs, jobs)
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{tiger.port}")
    try:
        yield registry, pb_grpc.TigerStub(channel), channel
    finally:
        await channel.close()
        await tiger.stop(0)


def generate_request(**fields) -> pb.GenerateRequest:
    return pb.GenerateRequest(
        model="m1", messages=[pb.Message(role="user", content="hi")], **fields
    )


async def chunks(stub, request) -> list[pb.GenerateChunk]:
    return [c async for c in stub.Generate(request, metadata=AUTH)]


async def test_events_become_chunks_and_params_arrive_validated(served) -> None:
    registry, stub, _ = served
    got = await chunks(stub, generate_request(max_tokens=2, temperature=0.0))
    assert [c.WhichOneof("chunk") for c in got] == ["info", "delta", "delta", "stop"]
    assert got[-1].stop.stop_reason == pb.STOP_REASON_MAX_TOKENS
    assert got[-1].stop.usage.output_tokens == 2
    params = registry.seen[-1]
    assert params.max_tokens == 2 and params.temperature == 0.0 and params.top_p is None


@pytest.mark.parametrize(
    ("error", "code"),
    [
        (NotFoundError("unknown model 'x'"), grpc.StatusCode.NOT_FOUND),
        (OverloadedError("at capacity"), grpc.StatusCode.RESOURCE_EXHAUSTED),
        (UnavailableError("preparing"), grpc.StatusCode.UNAVAILABLE),
    ],
)
async def test_errors_before_the_first_chunk_are_statuses(served, error, code) -> None:
    registry, stub, _ = served
    registry.error = error
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await chunks(stub, generate_request())
    assert info.value.code() == code and info.value.details() == error.message


async def test_a_bug_is_internal_and_its_details_stay_in_the_log(served) -> None:
    registry, stub, _ = served
    registry.error = RuntimeError("secret internals")
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await chunks(stub, generate_request())
    assert info.value.code() == grpc.StatusCode.INTERNAL
    assert info.value.details() == INTERNAL_MESSAGE


async def test_an_error_after_the_start_is_one_last_error_chunk(served) -> None:
    registry, stub, _ = served
    registry.error, registry.raise_after = RuntimeError("boom"), 2
    got = await chunks(stub, generate_request())
    assert [c.WhichOneof("chunk") for c in got] == ["info", "delta", "error"]
    assert got[-1].error.message == INTERNAL_MESSAGE


async def test_bad_params_never_reach_the_registry(served) -> None:
    registry, stub, _ = served
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await chunks(stub, generate_request(top_p=2.0))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert info.value.details() == "`top_p` must be a number in (0, 1], got 2.0"
    assert registry.seen == []


async def test_auth_is_required_but_health_stays_open(served) -> None:
    _, stub, channel = served
    wrong = (("authorization", "Bearer no"),)
    for metadata, needle in (((), "missing bearer"), (wrong, "invalid")):
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stub.ListModels(pb.ListModelsRequest(), metadata=metadata)
        assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
        assert needle in info.value.details()
    health = health_pb2_grpc.HealthStub(channel)
    reply = await health.Check(health_pb2.HealthCheckRequest(service="tiger.v1.Tiger"))
    assert reply.status == health_pb2.HealthCheckResponse.SERVING


async def test_models_train_and_import_convert(served) -> None:
    _, stub, _ = served
    models = (await stub.ListModels(pb.ListModelsRequest(), metadata=AUTH)).models
    assert [(m.id, m.loaded, m.running, m.tokens_generated) for m in models] == [
        ("m1", True, 1, 42)
    ]
    train = pb.TrainRequest(
        model="m1",
        output_model="m2",
        examples=[
            pb.Conversation(
                messages=[
                    pb.Message(role="user", content="q"),
                    pb.Message(role="assistant", content="a"),
                ]
            )
        ],
    )
    got = [c async for c in stub.Train(train, metadata=AUTH)]
    assert [c.WhichOneof("chunk") for c in got] == ["info", "progress", "stop"]
    assert got[-1].stop.model == "m2" and got[-1].stop.usage.train_tokens == 64
    request = pb.ImportModelRequest(path="/models/x", id="x")
    got = [c async for c in stub.ImportModel(request, metadata=AUTH)]
    assert got[-1].stop.model == "x" and got[-1].stop.duration_ms == 30
    with pytest.raises(grpc.aio.AioRpcError) as info:
        request = pb.ImportModelRequest(path="relative", id="x")
        _ = [c async for c in stub.ImportModel(request, metadata=AUTH)]
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_a_caller_that_cancels_closes_the_stream_below(served) -> None:
    registry, stub, _ = served
    registry.script = [Delta("x")] * 10_000 + [Stop(StopReason.END_TURN, USAGE)]
    call = stub.Generate(generate_request(), metadata=AUTH)
    await call.read()
    call.cancel()
    await asyncio.wait_for(registry.closed_early.wait(), 5)
