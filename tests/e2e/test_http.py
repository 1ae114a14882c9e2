"""End to end over HTTP: the real gateway in front of the real gRPC server."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import aiohttp
import pytest

from tests.helpers import (
    API_KEY,
    ROOT,
    TINY_MODEL_ID,
    Process,
    process_env,
    start_gateway,
)
from tiger_grpc.models.embedded import DEFAULT_MODEL_ID

pytestmark = pytest.mark.e2e
CLIENTS = Path(__file__).parents[1] / "clients"
HELLO = [{"role": "user", "content": "Hello!"}]


def seed_client(name: str, port: int, model: str, tmp_path: Path) -> Path:
    """The API guide's client, changed only in port and model id."""
    text = (CLIENTS / name).read_text()
    assert "localhost:45678" in text and "Llama-3.1-8b" in text
    path = tmp_path / name
    path.write_text(text.replace("45678", str(port)).replace("Llama-3.1-8b", model))
    return path


def parse_seed_output(stdout: str) -> tuple[list[str], str, dict[str, int]]:
    infos = re.findall(r"^Info:? (.*)$", stdout, re.MULTILINE)
    match = re.search(r"\nGeneration complete:? (\{.*\})\s*$", stdout, re.DOTALL)
    assert match, stdout
    usage = json.loads(re.sub(r"(\w+):", r'"\1":', match.group(1)).replace("'", '"'))
    body = stdout[: match.start()]
    text = "\n".join(line for line in body.split("\n") if not line.startswith("Info"))
    return infos, text, usage


async def post(base_url: str, payload, headers=None, raw: bytes | None = None):
    async with aiohttp.ClientSession() as session:
        async with session.post(
            f"{base_url}/v1/generate_response",
            json=None if raw is not None else payload,
            data=raw,
            headers=headers or {"Authorization": f"Bearer {API_KEY}"},
        ) as reply:
            return reply.status, reply.headers, await reply.text()


def ndjson(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


async def test_seed_python_client(
    base_url: str, gateway: Process, tmp_path: Path
) -> None:
    script = seed_client("seed_client.py", gateway.port, DEFAULT_MODEL_ID, tmp_path)
    env = process_env(tmp_path)
    result = subprocess.run(
        [sys.executable, str(script)],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stderr
    infos, text, usage = parse_seed_output(result.stdout)
    assert text.strip(), result.stdout
    # The guide's fields, and the prefix cache's count of the input tokens.
    assert set(usage) == {
        "duration_ms",
        "input_tokens",
        "output_tokens",
        "cached_tokens",
    }
    assert usage["input_tokens"] > 0 and usage["output_tokens"] > 0
    assert 0 <= usage["cached_tokens"] < usage["input_tokens"]
    assert all("Loading" in i or "ready" in i for i in infos)


@pytest.mark.skipif(shutil.which("node") is None, reason="Node.js is not installed")
async def test_seed_javascript_client(
    base_url: str, gateway: Process, tmp_path: Path
) -> None:
    script = seed_client(
        "seed_client.mjs", gateway.port, "SmolLM2-135M-Instruct", tmp_path
    )
    result = subprocess.run(
        ["node", str(script)],
        capture_output=True,
        text=True,
        env=process_env(tmp_path),
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    _, text, usage = parse_seed_output(result.stdout)
    assert text.strip()
    assert usage["output_tokens"] > 0


async def test_stream_and_non_stream_agree_greedy(base_url: str) -> None:
    payload = {
        "model": "SmolLM2-135M-INSTRUCT",
        "messages": HELLO,
        "temperature": 0,
        "max_tokens": 24,
        "stream": True,
    }
    status, headers, text = await post(base_url, payload)
    assert status == 200
    assert headers["Content-Type"].startswith("application/x-ndjson")
    assert headers.get("Transfer-Encoding") == "chunked"
    chunks = ndjson(text)
    assert [c["type"] for c in chunks].count("stop") == 1
    assert chunks[-1]["type"] == "stop"
    streamed = "".join(c["delta"] for c in chunks if c["type"] == "delta")
    status, headers, text = await post(base_url, {**payload, "stream": False})
    assert status == 200 and headers["Content-Type"].startswith("application/json")
    message = json.loads(text)
    assert message["type"] == "message"
    assert message["model"] == DEFAULT_MODEL_ID
    assert message["content"] == streamed
    assert message["stop_reason"] in ("end_turn", "max_tokens")
    assert message["usage"]["output_tokens"] <= 24
    assert message["usage"] == {
        **message["usage"],
        "input_tokens": chunks[-1]["usage"]["input_tokens"],
    }


async def test_max_tokens_stop_reason(base_url: str) -> None:
    status, _, text = await post(
        base_url,
        {
            "model": TINY_MODEL_ID,
            "messages": HELLO,
            "max_tokens": 5,
            "stream": True,
            "temperature": 0,
        },
    )
    assert status == 200
    stop = ndjson(text)[-1]
    assert stop == {"type": "stop", "stop_reason": "max_tokens", "usage": stop["usage"]}
    assert stop["usage"]["output_tokens"] == 5


@pytest.mark.parametrize(
    ("raw", "payload", "status", "needle"),
    [
        (b"{not json", None, 400, "not valid JSON"),
        (
            None,
            {"model": DEFAULT_MODEL_ID, "messages": []},
            400,
            "at least one message",
        ),
        (
            None,
            {"model": DEFAULT_MODEL_ID, "messages": HELLO, "stream": "yes"},
            400,
            "`stream`",
        ),
        (
            None,
            {"model": DEFAULT_MODEL_ID, "messages": HELLO, "top_p": 3},
            400,
            "`top_p`",
        ),
        (None, {"model": "no-such-model", "messages": HELLO}, 404, DEFAULT_MODEL_ID),
        (b"x" * 70_000, None, 413, "over the limit"),
    ],
)
async def test_errors_before_the_stream_are_http_errors(
    base_url, raw, payload, status, needle
):
    got, headers, text = await post(base_url, payload, raw=raw)
    assert got == status, text
    assert headers["Content-Type"].startswith("application/json")
    body = json.loads(text)
    assert body["type"] == "error" and needle in body["message"]


@pytest.mark.parametrize(
    ("headers", "needle"),
    [
        ({}, "missing bearer token"),
        ({"Authorization": "Bearer wrong"}, "invalid API key"),
    ],
)
async def test_auth(base_url: str, headers, needle) -> None:
    status, _, text = await post(
        base_url,
        {"model": DEFAULT_MODEL_ID, "messages": HELLO},
        headers=headers or {"X-Nothing": "1"},
    )
    assert status == 401
    assert needle in json.loads(text)["message"]
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{base_url}/v1/models") as reply:
            assert reply.status == 401


async def test_wrong_method_and_unknown_route(base_url: str) -> None:
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{base_url}/v1/generate_response") as reply:
            assert reply.status == 405
            assert reply.headers["Allow"] == "POST"
            assert (await reply.json())["type"] == "error"
        async with session.get(f"{base_url}/v1/nothing") as reply:
            assert reply.status == 404
            assert (await reply.json())["type"] == "error"


async def test_models_health_ready(base_url: str, auth) -> None:
    async with aiohttp.ClientSession(headers=auth) as session:
        async with session.get(f"{base_url}/v1/models") as reply:
            assert reply.status == 200
            models = {m["id"]: m for m in (await reply.json())["models"]}
        assert {DEFAULT_MODEL_ID, TINY_MODEL_ID} <= set(models)
        assert models[DEFAULT_MODEL_ID]["provider"] == "CPUExecutionProvider"
        assert models[DEFAULT_MODEL_ID]["context_length"] == 8192
        # The CPU default graph, on the GGUF's own blocks.
        assert models[DEFAULT_MODEL_ID]["precision"] == "int4"
        assert models[DEFAULT_MODEL_ID]["quantization"] == "source blocks"
        for route in ("/healthz", "/readyz"):
            async with session.get(f"{base_url}{route}") as reply:
                assert reply.status == 200, route


async def test_backend_down_is_503(store_home: Path, tmp_path: Path) -> None:
    """A gateway whose backend is gone answers 503, and /healthz still says alive."""
    dead = start_gateway(
        tmp_path, "lonely-gateway", process_env(store_home), "127.0.0.1:9"
    )
    try:
        url = f"http://127.0.0.1:{dead.port}"
        status, _, text = await post(
            url, {"model": DEFAULT_MODEL_ID, "messages": HELLO}
        )
        assert status == 503 and json.loads(text)["type"] == "error"
        async with aiohttp.ClientSession() as session:
            async with session.get(f"{url}/readyz") as reply:
                assert reply.status == 503
            async with session.get(f"{url}/healthz") as reply:
                assert reply.status == 200
    finally:
        dead.stop()
