"""Operating Tiger: metrics, request ids, logs, reflection, health, shutdown,
deadlines."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import threading
from pathlib import Path

import aiohttp
import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)

from tests.helpers import (
    API_KEY,
    ROOT,
    TINY_MODEL_ID,
    Process,
    process_env,
    stack,
    start_server,
)
from tiger_grpc.pb.tiger.v1 import tiger_pb2 as pb
from tiger_grpc.pb.tiger.v1 import tiger_pb2_grpc as pb_grpc

pytestmark = pytest.mark.e2e
HEADERS = {"Authorization": f"Bearer {API_KEY}"}
AUTH = (("authorization", f"Bearer {API_KEY}"),)
SHORT = {
    "model": TINY_MODEL_ID,
    "messages": [{"role": "user", "content": "hi"}],
    "max_tokens": 4,
}


def long_request(tokens: int = 3000) -> pb.GenerateRequest:
    return pb.GenerateRequest(
        model=TINY_MODEL_ID,
        max_tokens=tokens,
        temperature=0.0,
        messages=[pb.Message(role="user", content="Go on.")],
    )


async def get_text(url: str) -> str:
    async with aiohttp.ClientSession() as s, s.get(url) as reply:
        assert reply.status == 200
        return await reply.text()


def metric(text: str, line_start: str) -> float:
    values = [
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith(line_start)
    ]
    return values[0] if values else 0.0


async def test_metrics_on_both_processes(base_url: str, backend: Process) -> None:
    server_url = f"http://127.0.0.1:{backend.metrics_port}/metrics"
    ok = 'tiger_requests_total{code="OK",method="Generate",model="tiny-llama"}'
    before = metric(await get_text(server_url), ok)
    async with aiohttp.ClientSession(headers=HEADERS) as s:
        async with s.post(
            f"{base_url}/v1/generate_response", json={**SHORT, "stream": True}
        ) as r:
            assert r.status == 200
            await r.read()
    gateway = await get_text(f"{base_url}/metrics")
    assert (
        'tiger_gateway_requests_total{method="POST",model="tiny-llama",'
        'route="/v1/generate_response",status="200"}'
    ) in gateway
    assert "tiger_gateway_request_duration_seconds_bucket" in gateway
    # A served stream completes on the server: the gateway does not cancel it.
    await asyncio.sleep(0.2)
    server = await get_text(server_url)
    assert metric(server, ok) == before + 1
    for name in (
        'tiger_requests_total{code="OK",method="Generate",model="tiny-llama"}',
        'tiger_time_to_first_token_seconds_bucket{le="0.01",model="tiny-llama"}',
        "tiger_inter_token_latency_seconds_count",
        'tiger_running_sequences{model="tiny-llama"}',
        "tiger_queued_sequences",
        "tiger_prompt_tokens_total",
        "tiger_generated_tokens_total",
        'tiger_model_loads_total{model="tiny-llama"} 1.0',
        "tiger_trainings_running",
        "tiger_train_steps_total",
    ):
        assert name in server, name


async def test_request_ids_travel_and_keys_never_reach_the_logs(
    base_url, backend, gateway
):
    async with aiohttp.ClientSession(headers=HEADERS) as s:
        async with s.post(
            f"{base_url}/v1/generate_response",
            json=SHORT,
            headers={"X-Request-Id": "req-abc-123"},
        ) as r:
            assert r.headers["X-Request-Id"] == "req-abc-123"
        async with s.get(f"{base_url}/v1/models") as r:
            made = r.headers["X-Request-Id"]
            assert len(made) == 32
    await asyncio.sleep(0.2)
    server_log, gateway_log = backend.log.read_text(), gateway.log.read_text()
    assert "[req-abc-123] Generate model=tiny-llama code=OK" in server_log
    assert "[req-abc-123]" in gateway_log and f"[{made}]" in gateway_log
    assert API_KEY not in server_log and API_KEY not in gateway_log


def test_json_logs(store_home: Path, tmp_path: Path) -> None:
    proc = start_server(
        tmp_path,
        "json-server",
        process_env(store_home),
        "--no-prepare",
        "--log-format",
        "json",
    )
    proc.stop()
    lines = [
        json.loads(line) for line in proc.log.read_text().splitlines() if line.strip()
    ]
    assert lines and all(
        {"time", "level", "logger", "message", "request_id"} <= set(e) for e in lines
    )


def list_services(port: int) -> list[str]:
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    try:
        return sorted(ProtoReflectionDescriptorDatabase(channel).get_services())
    finally:
        channel.close()


def test_reflection_lists_the_service_and_can_be_turned_off(
    backend, store_home, tmp_path
) -> None:
    assert {"tiger.v1.Tiger", "grpc.health.v1.Health"} <= set(
        list_services(backend.port)
    )
    # A reflection client can call it with no generated code: find the method, build
    # its request from the served descriptors.
    from google.protobuf import descriptor_pool, message_factory

    channel = grpc.insecure_channel(f"127.0.0.1:{backend.port}")
    pool = descriptor_pool.DescriptorPool(ProtoReflectionDescriptorDatabase(channel))
    method = pool.FindServiceByName("tiger.v1.Tiger").FindMethodByName("ListModels")
    request_cls = message_factory.GetMessageClass(method.input_type)
    reply_cls = message_factory.GetMessageClass(method.output_type)
    call = channel.unary_unary(
        "/tiger.v1.Tiger/ListModels",
        request_serializer=request_cls.SerializeToString,
        response_deserializer=reply_cls.FromString,
    )
    assert TINY_MODEL_ID in [m.id for m in call(request_cls(), metadata=AUTH).models]
    channel.close()
    closed = start_server(
        tmp_path, "closed", process_env(store_home), "--no-prepare", "--no-reflection"
    )
    try:
        with pytest.raises(grpc.RpcError):
            list_services(closed.port)
    finally:
        closed.stop()


async def test_health_is_not_serving_while_the_default_model_prepares(
    tmp_path, monkeypatch
):
    """The real server in-process, with the slow preparation replaced by a gate."""
    from tiger_grpc.config import ServerConfig
    from tiger_grpc.server import app as server_module

    gate = threading.Event()
    monkeypatch.setattr(
        server_module, "ensure_default_model", lambda *a, **k: gate.wait(30)
    )
    tiger = await server_module.create_server(
        ServerConfig(home=tmp_path, api_key=API_KEY, host="127.0.0.1", port=0)
    )
    try:
        preparing = asyncio.create_task(tiger.prepare_default_model())
        async with grpc.aio.insecure_channel(f"127.0.0.1:{tiger.port}") as channel:
            health = health_pb2_grpc.HealthStub(channel)
            request = health_pb2.HealthCheckRequest(service="tiger.v1.Tiger")
            await asyncio.sleep(0.2)
            assert (
                await health.Check(request)
            ).status == health_pb2.HealthCheckResponse.NOT_SERVING
            with pytest.raises(grpc.aio.AioRpcError) as info:
                async for _ in pb_grpc.TigerStub(channel).Generate(
                    pb.GenerateRequest(
                        model="smollm2-135m-instruct",
                        messages=[pb.Message(role="user", content="x")],
                    ),
                    metadata=AUTH,
                ):
                    pass
            assert info.value.code() == grpc.StatusCode.UNAVAILABLE
            gate.set()
            await preparing
            assert (
                await health.Check(request)
            ).status == health_pb2.HealthCheckResponse.SERVING
    finally:
        gate.set()
        await tiger.stop(0)


async def test_preloaded_models_are_loaded_before_the_server_is_ready(
    store_home, tiny_model, caplog
):
    """The real server in-process: `--preload` loads the model before SERVING, so
    its first request has no loading to report; a model it cannot load is logged
    and does not keep the server from serving."""
    from tiger_grpc.config import ServerConfig
    from tiger_grpc.server.app import create_server

    config = ServerConfig(
        home=store_home,
        api_key=API_KEY,
        host="127.0.0.1",
        port=0,
        prepare_default_model=False,
        preload=("no-such-model", tiny_model.id),
    )
    tiger = await create_server(config)
    try:
        await tiger.get_ready()
        assert "could not preload no-such-model" in caplog.text
        loaded = {m.id: m.loaded for m in tiger.registry.models()}
        assert loaded[tiny_model.id]
        async with grpc.aio.insecure_channel(f"127.0.0.1:{tiger.port}") as channel:
            request = health_pb2.HealthCheckRequest(service="tiger.v1.Tiger")
            health = health_pb2_grpc.HealthStub(channel)
            assert (
                await health.Check(request)
            ).status == health_pb2.HealthCheckResponse.SERVING
            chunks = [
                chunk.WhichOneof("chunk")
                async for chunk in pb_grpc.TigerStub(channel).Generate(
                    pb.GenerateRequest(
                        model=tiny_model.id,
                        messages=[pb.Message(role="user", content="x")],
                        max_tokens=2,
                    ),
                    metadata=AUTH,
                )
            ]
            assert "info" not in chunks and chunks[-1] == "stop"
    finally:
        await tiger.stop(0)


async def test_deadline_exceeded_frees_the_sequence(backend: Process) -> None:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{backend.port}") as channel:
        stub = pb_grpc.TigerStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as info:
            async for _ in stub.Generate(long_request(), metadata=AUTH, timeout=0.5):
                pass
        assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        for _ in range(100):
            models = (
                await stub.ListModels(pb.ListModelsRequest(), metadata=AUTH)
            ).models
            if next(m for m in models if m.id == TINY_MODEL_ID).running == 0:
                break
            await asyncio.sleep(0.02)
        assert next(m for m in models if m.id == TINY_MODEL_ID).running == 0


@pytest.mark.parametrize("victim", ["server", "gateway"])
async def test_sigterm_lets_a_running_stream_finish(
    victim, store_home, tiny_model, tmp_path
):
    grace = ("--shutdown-grace", "20")
    with stack(store_home, tmp_path, grace, grace) as (server, gateway):
        url = f"http://127.0.0.1:{gateway.port}/v1/generate_response"
        target = server if victim == "server" else gateway
        async with aiohttp.ClientSession(headers=HEADERS) as s:
            async with s.post(
                url, json={**SHORT, "max_tokens": 400, "temperature": 0, "stream": True}
            ) as reply:
                chunks = []
                async for line in reply.content:
                    chunks.append(json.loads(line))
                    if len(chunks) == 3:
                        target.popen.send_signal(signal.SIGTERM)
        assert chunks[-1]["type"] == "stop", chunks[-1]
        assert chunks[-1]["usage"]["output_tokens"] == 400
        assert target.popen.wait(timeout=30) == 0


def test_load_script_reports_and_every_stream_ends_once(base_url: str) -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "tiger_grpc.tools.loadtest",
            "--url",
            base_url,
            "--api-key",
            API_KEY,
            "--model",
            TINY_MODEL_ID,
            "--concurrency",
            "8",
            "--duration",
            "3",
            "--max-tokens",
            "8",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads(result.stdout)
    assert report["completed_streams"] > 0 and report["every_stream_ended_once"]
    assert report["transport_errors"] == 0 and not report["other_http_errors"]
    assert set(report["latency_ms"]) == {"p50", "p99"}
    assert sum(report["stop_reasons"].values()) == report["completed_streams"]


async def test_a_caller_that_leaves_while_its_model_loads(
    store_home, tiny_model, tmp_path
):
    """The load goes on for the next caller: no failed import, no second copy."""
    with stack(store_home, tmp_path) as (server, _):
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            stub = pb_grpc.TigerStub(channel)
            with pytest.raises(grpc.aio.AioRpcError) as info:
                async for _ in stub.Generate(
                    long_request(5), metadata=AUTH, timeout=0.05
                ):
                    pass
            assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
            chunks = [c async for c in stub.Generate(long_request(5), metadata=AUTH)]
            assert chunks[-1].HasField("stop")
        metrics = await get_text(f"http://127.0.0.1:{server.metrics_port}/metrics")
        assert 'tiger_model_loads_total{model="tiny-llama"} 1.0' in metrics


async def test_serving_loads_no_pytorch(store_home, tiny_model, tmp_path) -> None:
    """A fresh server that loads a model and generates maps no PyTorch library:
    the tokenizer and chat template come from `tokenizers` and Jinja."""
    server = start_server(tmp_path, "light", process_env(store_home), "--no-prepare")
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            request = pb.GenerateRequest(
                model=tiny_model.id,
                messages=[pb.Message(role="user", content="hi")],
                max_tokens=3,
            )
            chunks = [
                c.WhichOneof("chunk")
                async for c in pb_grpc.TigerStub(channel).Generate(
                    request, metadata=AUTH
                )
            ]
        assert chunks[-1] == "stop"
        maps = Path(f"/proc/{server.popen.pid}/maps").read_text()
        assert "torch" not in maps and "onnxruntime" in maps
    finally:
        server.stop()
