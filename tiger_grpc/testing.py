"""Testing with Tiger: a real Tiger server with a tiny model, for your async pytest suite.

In your `conftest.py`:

    pytest_plugins = ["tiger_grpc.testing"]

and in a test:

    async def test_my_code_talks_to_tiger(tiger_client, tiger_server):
        answer = await tiger_client.complete("Hello!", model=tiger_server.model, max_tokens=5)
        assert answer.usage.output_tokens == 5

The model is a 2-layer random-weight Llama with the real SmolLM2 tokenizer (its text
is gibberish, its protocol behaviour is real), built once and cached under
`~/.cache/tiger/testing`. `start_tiger_server()` does the same outside pytest.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from .client import AsyncTigerClient
from .store import ModelManifest, ModelStore

TINY_MODEL_ID = "tiny-llama"


def tiny_llama_config(vocab_size: int, **overrides: Any) -> Any:
    """The tiny test Llama's shape: 2 layers 64 wide, 4 heads over 2 KV heads."""
    from transformers import LlamaConfig

    return LlamaConfig(
        **{
            "vocab_size": vocab_size,
            "hidden_size": 64,
            "intermediate_size": 128,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
            "bos_token_id": 1,
            "eos_token_id": 2,
            **overrides,
        }
    )


def build_tiny_model(
    store: ModelStore,
    tokenizer_dir: Path | None = None,
    model_id: str = TINY_MODEL_ID,
    context_length: int = 4096,
) -> ModelManifest:
    """A 2-layer random Llama with the real tokenizer: exported by optimum, with fused
    fp32 and fp16 graphs. Uses the embedded model's tokenizer, read straight from its GGUF file
    when `tokenizer_dir` is not given."""
    existing = store.get(model_id)
    if existing is not None:
        return existing
    import torch
    from transformers import AutoTokenizer, LlamaForCausalLM

    from .prepare import add_fast_graph, end_of_turn_ids, export_onnx, find_gguf

    if tokenizer_dir is None:
        gguf = find_gguf()
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        tokenizer.eos_token = tokenizer.pad_token = "<|im_end|>"
        tokenizer.add_bos_token = False
    else:
        tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    torch.manual_seed(0)
    config = tiny_llama_config(
        len(tokenizer),
        max_position_embeddings=context_length,
        pad_token_id=2,
        tie_word_embeddings=True,
    )
    model = LlamaForCausalLM(config).eval()
    with store.lock(model_id), store.staging(model_id) as scratch:
        model.save_pretrained(scratch / "hf")
        tokenizer.save_pretrained(scratch / "hf")
        export_onnx(scratch / "hf", scratch / "onnx")
        ModelManifest(
            id=model_id,
            source="tiger_grpc.testing: random weights",
            context_length=context_length,
            eos_token_ids=end_of_turn_ids(tokenizer, model.generation_config),
        ).write(scratch)
    add_fast_graph(store, model_id, "fp32")
    return add_fast_graph(store, model_id, "fp16")


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
    with tempfile.TemporaryDirectory(prefix="tiger-test-") as workdir:
        port_file = Path(workdir) / "port"
        log = open(Path(workdir) / "server.log", "wb")  # noqa: SIM115 - closed below
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "tiger_grpc.server",
                "--host",
                "127.0.0.1",
                "--port",
                "0",
                "--no-prepare",
                "--metrics-port",
                "-1",
                "--port-file",
                str(port_file),
                *extra_args,
            ],
            env={**os.environ, "TIGER_HOME": str(home), "TIGER_API_KEY": api_key},
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            deadline = time.monotonic() + 120
            while not port_file.exists():
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(
                        "tiger-server did not start:\n"
                        + (Path(workdir) / "server.log").read_text()[-2000:]
                    )
                time.sleep(0.05)
            port = int(port_file.read_text().split()[0])
            yield TigerServerInfo(
                f"127.0.0.1:{port}", api_key, TINY_MODEL_ID, home, process
            )
        finally:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
            log.close()


@pytest.fixture(scope="session")
def tiger_server() -> Iterator[TigerServerInfo]:
    """A real Tiger gRPC server for the test session, serving `tiger_server.model`."""
    with start_tiger_server() as info:
        yield info


@pytest.fixture
async def tiger_client(
    tiger_server: TigerServerInfo,
) -> AsyncIterator[AsyncTigerClient]:
    """An `AsyncTigerClient` connected to `tiger_server`, closed after the test."""
    async with AsyncTigerClient(
        tiger_server.target, api_key=tiger_server.api_key
    ) as client:
        yield client
