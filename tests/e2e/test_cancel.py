"""Cancellation frees the engine at once; every stream ends with one stop or error."""

from __future__ import annotations

import asyncio
import json
import signal
import time

import aiohttp
import grpc
import pytest

from tests.helpers import API_KEY, TINY_MODEL_ID, Process, stack
from tiger_grpc.pb.tiger.v1 import tiger_pb2 as pb
from tiger_grpc.pb.tiger.v1 import tiger_pb2_grpc as pb_grpc

pytestmark = pytest.mark.e2e
AUTH = (("authorization", f"Bearer {API_KEY}"),)
LONG = {
    "model": TINY_MODEL_ID,
    "messages": [{"role": "user", "content": "Go on forever."}],
    "max_tokens": 3000,
    "temperature": 0,
    "stream": True,
}


async def tiny_status(port: int) -> pb.ModelInfo:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        reply = await pb_grpc.TigerStub(channel).ListModels(
            pb.ListModelsRequest(), metadata=AUTH
        )
    return next(m for m in reply.models if m.id == TINY_MODEL_ID)


async def wait_idle(port: int, timeout: float = 5.0) -> pb.ModelInfo:
    deadline = time.monotonic() + timeout
    while True:
        status = await tiny_status(port)
        if status.running == 0 or time.monotonic() > deadline:
            return status
        await asyncio.sleep(0.02)


async def assert_freed(port: int, before: int) -> None:
    """Nothing is generating, well short of the 3000 tokens asked for."""
    status = await wait_idle(port)
    assert status.running == 0
    spent = status.tokens_generated - before
    assert 0 < spent < 3000
    await asyncio.sleep(0.3)
    assert (await tiny_status(port)).tokens_generated == status.tokens_generated


async def test_http_client_that_leaves_frees_the_engine(
    base_url: str, backend: Process
) -> None:
    await wait_idle(backend.port)
    before = (await tiny_status(backend.port)).tokens_generated
    async with aiohttp.ClientSession(
        headers={"Authorization": f"Bearer {API_KEY}"}
    ) as s:
        reply = await s.post(f"{base_url}/v1/generate_response", json=LONG)
        deltas = 0
        async for line in reply.content:
            deltas += json.loads(line)["type"] == "delta"
            if deltas == 5:
                break
        assert (await tiny_status(backend.port)).running == 1
        reply.close()  # drop the connection mid-stream
    await assert_freed(backend.port, before)
    # The next request has the engine to itself and completes in full.
    async with aiohttp.ClientSession(
        headers={"Authorization": f"Bearer {API_KEY}"}
    ) as s:
        async with s.post(
            f"{base_url}/v1/generate_response",
            json={**LONG, "max_tokens": 50, "stream": False},
        ) as reply:
            assert (await reply.json())["usage"]["output_tokens"] == 50


async def test_grpc_client_that_cancels_frees_the_engine(backend: Process) -> None:
    await wait_idle(backend.port)
    before = (await tiny_status(backend.port)).tokens_generated
    async with grpc.aio.insecure_channel(f"127.0.0.1:{backend.port}") as channel:
        call = pb_grpc.TigerStub(channel).Generate(
            pb.GenerateRequest(
                model=TINY_MODEL_ID,
                messages=[pb.Message(role="user", content="Go on forever.")],
                max_tokens=3000,
                temperature=0.0,
            ),
            metadata=AUTH,
        )
        deltas = 0
        async for chunk in call:
            deltas += chunk.HasField("delta")
            if deltas == 5:
                break
        call.cancel()
    await assert_freed(backend.port, before)


async def test_backend_killed_mid_stream_ends_with_one_error(
    store_home, tiny_model, tmp_path
):
    with stack(store_home, tmp_path) as (server, gateway):
        url = f"http://127.0.0.1:{gateway.port}"
        async with aiohttp.ClientSession(
            headers={"Authorization": f"Bearer {API_KEY}"}
        ) as s:
            async with s.post(f"{url}/v1/generate_response", json=LONG) as reply:
                assert reply.status == 200
                chunks = []
                async for line in reply.content:
                    chunks.append(json.loads(line))
                    if sum(c["type"] == "delta" for c in chunks) == 5:
                        server.popen.send_signal(signal.SIGKILL)
            terminal = [c for c in chunks if c["type"] in ("stop", "error")]
            assert len(terminal) == 1 and chunks[-1]["type"] == "error"
            assert chunks[-1]["message"]
            # The gateway lives on and says clearly that the backend is gone.
            async with s.get(f"{url}/healthz") as health:
                assert health.status == 200
            async with s.post(f"{url}/v1/generate_response", json=LONG) as reply:
                assert reply.status == 503
                assert (await reply.json())["type"] == "error"
