"""Testing with Tiger: a real Tiger server with a tiny model, for async pytest suites.

In your `conftest.py`:

    pytest_plugins = ["tiger_grpc.testing"]

and in a test (the marker makes it run under pytest-asyncio's default strict mode;
with `asyncio_mode = "auto"` it is not needed, and harmless):

    @pytest.mark.asyncio
    async def test_my_code_talks_to_tiger(tiger_client, tiger_server):
        answer = await tiger_client.complete(
            "Hello!", model=tiger_server.model, max_tokens=5
        )
        assert answer.usage.output_tokens == 5

The model is a 2-layer random-weight Llama with the real SmolLM2 tokenizer (its text
is gibberish, its protocol behaviour is real), built once and cached under
`~/.cache/tiger/testing`. `start_tiger_server()` does the same outside pytest.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import subprocess
import tempfile
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import pytest_asyncio

from ..client import AsyncTigerClient
from ..models.store import ModelStore
from ..runtime.process import start_process
from .tiny import TINY_MODEL_ID, build_tiny_model, tiny_llama_config

__all__ = [
    "TINY_MODEL_ID",
    "TigerServerInfo",
    "build_tiny_model",
    "start_tiger_server",
    "tiger_client",
    "tiger_server",
    "tiny_llama_config",
]


@dataclass(frozen=True)
class TigerServerInfo:
    target: str  # host:port for gRPC
    api_key: str
    model: str
    home: Path
    process: subprocess.Popen[bytes]


@contextlib.contextmanager
def start_tiger_server(
    home: Path | None = None,
    *,
    api_key: str | None = None,
    extra_args: tuple[str, ...] = (),
) -> Iterator[TigerServerInfo]:
    """Runs `tiger-server` on a free port in a subprocess, serving the tiny model."""
    home = home or Path(
        os.environ.get(
            "TIGER_TESTING_HOME", Path.home() / ".cache" / "tiger" / "testing"
        )
    )
    build_tiny_model(ModelStore(home))
    api_key = api_key or secrets.token_hex(16)
    env = {**os.environ, "TIGER_HOME": str(home), "TIGER_API_KEY": api_key}
    with tempfile.TemporaryDirectory(prefix="tiger-test-") as workdir:
        server = start_process(
            [
                "tiger_grpc.server",
                "--host",
                "127.0.0.1",
                "--port",
                "0",
                "--no-prepare",
                "--metrics-port",
                "-1",
                *extra_args,
            ],
            Path(workdir),
            "server",
            env,
        )
        try:
            yield TigerServerInfo(
                f"127.0.0.1:{server.port}", api_key, TINY_MODEL_ID, home, server.popen
            )
        finally:
            server.stop(timeout=30)


@pytest.fixture(scope="session")
def tiger_server() -> Iterator[TigerServerInfo]:
    """A real Tiger gRPC server for the test session, serving `tiger_server.model`."""
    with start_tiger_server() as info:
        yield info


@pytest_asyncio.fixture
async def tiger_client(
    tiger_server: TigerServerInfo,
) -> AsyncIterator[AsyncTigerClient]:
    """An `AsyncTigerClient` connected to `tiger_server`, closed after the test."""
    async with AsyncTigerClient(
        tiger_server.target, api_key=tiger_server.api_key
    ) as client:
        yield client
