"""End to end over gRPC: a real client calling the real server."""

from __future__ import annotations

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.helpers import API_KEY, TINY_MODEL_ID, Process
from tiger_grpc.models.embedded import DEFAULT_MODEL_ID
from tiger_grpc.pb.tiger.v1 import tiger_pb2 as pb
from tiger_grpc.pb.tiger.v1 import tiger_pb2_grpc as pb_grpc

pytestmark = pytest.mark.e2e
AUTH = (("authorization", f"Bearer {API_KEY}"),)


@pytest.fixture
async def channel(backend: Process):
    async with grpc.aio.insecure_channel(f"127.0.0.1:{backend.port}") as channel:
        yield channel


def request(model: str = DEFAULT_MODEL_ID, **fields) -> pb.GenerateRequest:
    return pb.GenerateRequest(
        model=model,
        messages=[pb.Message(role="user", content="What is 2 + 2?")],
        **fields,
    )


async def test_generate_streams_deltas_then_one_stop(channel) -> None:
    stub = pb_grpc.TigerStub(channel)
    chunks = [
        c
        async for c in stub.Generate(
            request(model="SmolLM2-135m-Instruct", temperature=0.0, max_tokens=30),
            metadata=AUTH,
        )
    ]
    kinds = [c.WhichOneof("chunk") for c in chunks]
    assert kinds[-1] == "stop" and kinds.count("stop") == 1 and "error" not in kinds
    assert set(kinds) <= {"info", "delta", "stop"}
    text = "".join(c.delta.delta for c in chunks if c.HasField("delta"))
    assert "4" in text or "four" in text.lower()
    stop = chunks[-1].stop
    assert stop.stop_reason in (pb.STOP_REASON_END_TURN, pb.STOP_REASON_MAX_TOKENS)
    assert stop.usage.input_tokens > 0 and 0 < stop.usage.output_tokens <= 30
    assert stop.usage.duration_ms > 0


async def test_first_use_loads_with_info_chunks(channel) -> None:
    """Each model loads once, announcing itself with the guide's info messages."""
    stub = pb_grpc.TigerStub(channel)
    models = {
        m.id: m
        for m in (await stub.ListModels(pb.ListModelsRequest(), metadata=AUTH)).models
    }
    chunks = [
        c
        async for c in stub.Generate(
            request(TINY_MODEL_ID, max_tokens=3), metadata=AUTH
        )
    ]
    infos = [c.info.message for c in chunks if c.HasField("info")]
    if not models[TINY_MODEL_ID].loaded:
        assert infos[:2] == [f"Loading model {TINY_MODEL_ID}", "Loading tokenizer"]
        assert "CPUExecutionProvider" in infos[2]
    again = [
        c
        async for c in stub.Generate(
            request(TINY_MODEL_ID, max_tokens=3), metadata=AUTH
        )
    ]
    assert not any(c.HasField("info") for c in again)
    models = {
        m.id: m
        for m in (await stub.ListModels(pb.ListModelsRequest(), metadata=AUTH)).models
    }
    assert models[TINY_MODEL_ID].loaded
    assert models[TINY_MODEL_ID].provider == "CPUExecutionProvider"
    # No int4 graph: the float32 one, the closest to the weights.
    assert models[TINY_MODEL_ID].precision == "fp32"
    assert models[TINY_MODEL_ID].quantization == "none"


@pytest.mark.parametrize(
    ("metadata", "req", "code", "needle"),
    [
        ((), request(), grpc.StatusCode.UNAUTHENTICATED, "missing bearer token"),
        (
            (("authorization", "Bearer nope"),),
            request(),
            grpc.StatusCode.UNAUTHENTICATED,
            "invalid API key",
        ),
        (AUTH, request(model="nope"), grpc.StatusCode.NOT_FOUND, DEFAULT_MODEL_ID),
        (AUTH, request(top_p=0.0), grpc.StatusCode.INVALID_ARGUMENT, "`top_p`"),
        (
            AUTH,
            pb.GenerateRequest(model=DEFAULT_MODEL_ID),
            grpc.StatusCode.INVALID_ARGUMENT,
            "`messages`",
        ),
    ],
)
async def test_status_codes(channel, metadata, req, code, needle) -> None:
    stub = pb_grpc.TigerStub(channel)
    with pytest.raises(grpc.aio.AioRpcError) as info:
        async for _ in stub.Generate(req, metadata=metadata):
            pass
    assert info.value.code() == code
    assert needle in info.value.details()


async def test_list_models_needs_auth(channel) -> None:
    stub = pb_grpc.TigerStub(channel)
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.ListModels(pb.ListModelsRequest())
    assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED


async def test_health_service(channel) -> None:
    stub = health_pb2_grpc.HealthStub(channel)
    for service in ("", "tiger.v1.Tiger"):
        reply = await stub.Check(health_pb2.HealthCheckRequest(service=service))
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
