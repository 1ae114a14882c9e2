"""Fixtures: the embedded model, a tiny random Llama, and the real processes.

Tests come in three tiers: `unit/` (no model, no process: validation, sampling,
stopping, the servicer and the gateway in-process with fakes), `engine/` (the real
ONNX graphs of a tiny random Llama and the embedded model, in-process), and `e2e/`
(the real gRPC server and gateway on free ports, driven by real clients).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import API_KEY, process_env, start_gateway, start_server
from tiger_grpc.config import default_home
from tiger_grpc.models.embedded import DEFAULT_MODEL_ID, ensure_default_model
from tiger_grpc.models.precision import CPU_DEFAULT
from tiger_grpc.models.store import ModelManifest, ModelStore
from tiger_grpc.runtime.process import Process
from tiger_grpc.testing import TINY_MODEL_ID, build_tiny_model


@pytest.fixture(scope="session")
def default_model_dir() -> Path:
    """The embedded model, prepared once in the user's store and reused across runs."""
    cache = Path(os.environ.get("TIGER_TEST_CACHE", default_home()))
    store = ModelStore(cache)
    ensure_default_model(store, CPU_DEFAULT)
    return store.path(DEFAULT_MODEL_ID)


@pytest.fixture(scope="session")
def tokenizer(default_model_dir: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(default_model_dir / "hf")


@pytest.fixture(scope="session")
def store_home(
    tmp_path_factory: pytest.TempPathFactory, default_model_dir: Path
) -> Path:
    """A model store of the test session's own, holding the embedded model."""
    home = tmp_path_factory.mktemp("tiger-home")
    store = ModelStore(home)
    store.path(DEFAULT_MODEL_ID).symlink_to(default_model_dir, target_is_directory=True)
    return home


@pytest.fixture(scope="session")
def tiny_model(store_home: Path, default_model_dir: Path) -> ModelManifest:
    """A 2-layer random-weight Llama with the real tokenizer, exported by optimum."""
    return build_tiny_model(
        ModelStore(store_home), default_model_dir / "hf", TINY_MODEL_ID
    )


@pytest.fixture(scope="session")
def torch_model(store_home: Path, tiny_model: ModelManifest):
    """The tiny model in PyTorch: the reference the ONNX graphs are checked against."""
    from transformers import LlamaForCausalLM

    return LlamaForCausalLM.from_pretrained(
        ModelStore(store_home).path(tiny_model.id) / "hf"
    ).eval()


@pytest.fixture(scope="session")
def backend(
    store_home: Path, tiny_model: ModelManifest, tmp_path_factory
) -> Iterator[Process]:
    """The real gRPC server on a free port, serving the embedded and the tiny model."""
    workdir = tmp_path_factory.mktemp("backend")
    # The guide's own requests set no max_tokens: 256 rather than 1024 keeps the
    # suite's time from hanging on how long a sampled answer rambles.
    flags = ("--default-max-tokens", "256")
    proc = start_server(workdir, "server", process_env(store_home), *flags)
    yield proc
    proc.stop()


@pytest.fixture(scope="session")
def gateway(backend: Process, store_home: Path, tmp_path_factory) -> Iterator[Process]:
    """The real HTTP gateway on a free port, in front of `backend`."""
    workdir = tmp_path_factory.mktemp("gateway")
    proc = start_gateway(
        workdir,
        "gateway",
        process_env(store_home),
        f"127.0.0.1:{backend.port}",
        "--max-body-bytes",
        "65536",
    )
    yield proc
    proc.stop()


@pytest.fixture(scope="session")
def base_url(gateway: Process) -> str:
    return f"http://127.0.0.1:{gateway.port}"


@pytest.fixture(scope="session")
def auth() -> dict[str, str]:
    return {"Authorization": f"Bearer {API_KEY}"}
