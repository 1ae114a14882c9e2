"""The gateway in-process, with aiohttp's test client and a fake gRPC stub: bodies
validated before the backend, statuses mapped through the one table, chunks
streamed and collected, and the OpenAPI document in step with the routes."""

from __future__ import annotations

import json

import grpc
import pytest
from grpc_health.v1 import health_pb2

from gateway.openapi import openapi
from tests.unit.fakes import (
    AUTH,
    KEY,
    FakeCall,
    rpc_error,
)
from tiger_grpc.pb.tiger.v1 import tiger_pb2 as pb

HELLO = {"model": "M1", "messages": [{"role": "user", "content": "hi"}]}


async def test_a_reply_is_collected_and_the_request_forwarded(gateway) -> None:
    client, tiger, _ = gateway
    reply = await client.post(
        "/v1/generate_response",
        json={**HELLO, "max_tokens": 2},
        headers={**AUTH, "X-Request-Id": "abc"},
    )
    assert reply.status == 200 and reply.headers["x-request-id"] == "abc"
    assert await reply.json() == {
        "type": "message",
        "model": "m1",
        "content": "Héllo",
        "stop_reason": "end_turn",
        "usage": {
            "duration_ms": 5,
            "input_tokens": 3,
            "output_tokens": 2,
            "cached_tokens": 1,
        },
    }
    _, request, metadata = tiger.calls[-1]
    assert request.max_tokens == 2 and not request.HasField("seed")
    assert dict(metadata) == {"authorization": f"Bearer {KEY}", "x-request-id": "abc"}


async def test_a_stream_is_ndjson_ending_with_one_stop(gateway) -> None:
    client, _, _ = gateway
    reply = await client.post(
        "/v1/generate_response", json={**HELLO, "stream": True}, headers=AUTH
    )
    assert reply.headers["Content-Type"] == "application/x-ndjson"
    lines = [json.loads(line) for line in (await reply.text()).splitlines()]
    assert [c["type"] for c in lines] == ["info", "delta", "delta", "stop"]


@pytest.mark.parametrize(
    ("headers", "body", "status", "needle"),
    [
        ({}, HELLO, 401, "missing bearer token"),
        ({"Authorization": "Bearer nope"}, HELLO, 401, "invalid API key"),
        (AUTH, {**HELLO, "top_p": 3}, 400, "`top_p` must be a number in (0, 1]"),
        (AUTH, {**HELLO, "stream": "yes"}, 400, "`stream` must be a boolean"),
        (AUTH, [1], 400, "must be a JSON object"),
    ],
)
async def test_refused_before_the_backend(gateway, headers, body, status, needle):
    client, tiger, _ = gateway
    reply = await client.post("/v1/generate_response", json=body, headers=headers)
    assert reply.status == status
    assert needle in (await reply.json())["message"]
    assert tiger.calls == []


@pytest.mark.parametrize(
    ("code", "details", "status"),
    [
        (grpc.StatusCode.NOT_FOUND, "unknown model", 404),
        (grpc.StatusCode.INVALID_ARGUMENT, "prompt too long", 400),
        (grpc.StatusCode.RESOURCE_EXHAUSTED, "at capacity", 429),
        (grpc.StatusCode.UNAVAILABLE, "failed to connect to all addresses", 503),
        (grpc.StatusCode.INTERNAL, "internal error", 500),
    ],
)
async def test_backend_statuses_map_through_the_table(gateway, code, details, status):
    client, tiger, _ = gateway
    tiger.next = FakeCall([], rpc_error(code, details))
    reply = await client.post("/v1/generate_response", json=HELLO, headers=AUTH)
    assert reply.status == status
    assert (await reply.json())["type"] == "error"
    assert ("Retry-After" in reply.headers) == (status == 429)


async def test_a_failure_after_the_start(gateway) -> None:
    client, tiger, _ = gateway
    delta = pb.GenerateChunk(delta=pb.DeltaChunk(delta="x"))
    tiger.next = FakeCall([delta], rpc_error(grpc.StatusCode.UNAVAILABLE, "gone"))
    reply = await client.post(
        "/v1/generate_response", json={**HELLO, "stream": True}, headers=AUTH
    )
    lines = [json.loads(line) for line in (await reply.text()).splitlines()]
    assert lines == [
        {"type": "delta", "delta": "x"},
        {"type": "error", "message": "gone"},
    ]
    # A failure chunk carries its gRPC code: a whole answer gets its status.
    code = grpc.StatusCode.RESOURCE_EXHAUSTED.value[0]
    full = pb.ErrorChunk(message="full", code=code)
    tiger.next = FakeCall([pb.GenerateChunk(error=full)])
    reply = await client.post("/v1/generate_response", json=HELLO, headers=AUTH)
    assert reply.status == 429 and reply.headers["Retry-After"] == "1"
    assert (await reply.json()) == {"type": "error", "message": "full"}
    tiger.next = FakeCall([delta])  # the backend ends without a stop
    reply = await client.post("/v1/generate_response", json=HELLO, headers=AUTH)
    assert reply.status == 500 and "without a stop" in (await reply.json())["message"]


async def test_models_ready_and_json_errors(gateway) -> None:
    client, _, health = gateway
    reply = await client.get("/v1/models", headers=AUTH)
    assert (await reply.json())["models"][0]["id"] == "m1"
    assert (await client.get("/readyz")).status == 200
    health.status = health_pb2.HealthCheckResponse.NOT_SERVING
    assert (await client.get("/readyz")).status == 503
    reply = await client.get("/v1/generate_response")
    assert reply.status == 405 and reply.headers["Allow"] == "POST"
    assert (await reply.json())["type"] == "error"


async def test_the_openapi_document_describes_every_route(gateway) -> None:
    client, _, _ = gateway
    document = await (await client.get("/openapi.json")).json()
    routes = {
        (route.method.lower(), route.resource.canonical)
        for route in client.app.router.routes()
        if route.method != "HEAD"
    }
    described = {(m, p) for p, ops in document["paths"].items() for m in ops}
    assert routes == described
    assert document == openapi()
    schemas = document["components"]["schemas"]
    for name in ("GenerateRequest", "TrainRequest", "ImportRequest"):
        assert schemas[name]["type"] == "object"
    max_tokens = schemas["GenerateRequest"]["properties"]["max_tokens"]["anyOf"][0]
    assert max_tokens["minimum"] == 1 and max_tokens["maximum"] == 1_000_000
