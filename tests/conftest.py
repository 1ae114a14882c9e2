"""Shared fixtures: the embedded model, a tiny random Llama, and the real processes."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tiger_grpc.config import default_home
from tiger_grpc.prepare import DEFAULT_MODEL_ID, ensure_default_model
from tiger_grpc.store import ModelManifest, ModelStore
from tiger_grpc.testing import TINY_MODEL_ID, build_tiny_model

ROOT = Path(__file__).resolve().parent.parent
API_KEY = "test-key-123"


@pytest.fixture(scope="session")
def default_model_dir() -> Path:
    """The embedded model, prepared once in the user's store and reused across runs."""
    cache = Path(os.environ.get("TIGER_TEST_CACHE", default_home()))
    store = ModelStore(cache)
    ensure_default_model(store)
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


def graph(store_home: Path, tiny_model: ModelManifest, precision: str = "fp32") -> Path:
    """The tiny model's fused graph of `precision`."""
    return (
        ModelStore(store_home).path(tiny_model.id) / tiny_model.fast_graphs[precision]
    )


@dataclass
class Process:
    popen: subprocess.Popen[bytes]
    port: int
    log: Path
    metrics_port: int = 0

    def stop(self) -> None:
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()


def start_process(
    args: list[str], workdir: Path, name: str, env: dict[str, str]
) -> Process:
    """Starts `python -m ...` with `--port-file`, and waits for the ports it bound."""
    if args[0] == "tiger_grpc.server" and "--metrics-port" not in args:
        args = [*args, "--metrics-port", "0"]
    port_file = workdir / f"{name}.port"
    port_file.unlink(missing_ok=True)
    log = workdir / f"{name}.log"
    with log.open("wb") as out:
        popen = subprocess.Popen(
            [sys.executable, "-m", *args, "--port-file", str(port_file)],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=ROOT,
        )
    deadline = time.monotonic() + 120
    while not port_file.exists():
        if popen.poll() is not None or time.monotonic() > deadline:
            popen.kill()
            raise RuntimeError(f"{name} did not start:\n{log.read_text()[-3000:]}")
        time.sleep(0.05)
    ports = [int(p) for p in port_file.read_text().split()]
    return Process(popen, ports[0], log, *ports[1:])


LOCAL = ("--port", "0", "--host", "127.0.0.1")  # a free port, loopback only


def start_server(workdir: Path, name: str, env: dict[str, str], *flags: str) -> Process:
    """`tiger-server` on a free local port."""
    return start_process(["tiger_grpc.server", *LOCAL, *flags], workdir, name, env)


def start_gateway(
    workdir: Path, name: str, env: dict[str, str], target: str, *flags: str
) -> Process:
    """`tiger-gateway` on a free local port, in front of `target`."""
    return start_process(
        ["gateway.main", *LOCAL, "--grpc-target", target, *flags], workdir, name, env
    )


def process_env(store_home: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.update(TIGER_HOME=str(store_home), TIGER_API_KEY=API_KEY, PYTHONUNBUFFERED="1")
    return env


@pytest.fixture(scope="session")
def backend(
    store_home: Path, tiny_model: ModelManifest, tmp_path_factory
) -> Iterator[Process]:
    """The real gRPC server on a free port, serving the embedded and the tiny model."""
    workdir = tmp_path_factory.mktemp("backend")
    proc = start_server(workdir, "server", process_env(store_home))
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


@contextlib.contextmanager
def stack(
    store_home: Path,
    workdir: Path,
    server_args: tuple[str, ...] = (),
    gateway_args: tuple[str, ...] = (),
) -> Iterator[tuple[Process, Process]]:
    """A server (without preparing the default model) and a gateway in front of it, of a
    test's own, stopped at the end."""
    env = process_env(store_home)
    server = start_server(workdir, "own-server", env, "--no-prepare", *server_args)
    try:
        gateway = start_gateway(
            workdir, "own-gateway", env, f"127.0.0.1:{server.port}", *gateway_args
        )
        try:
            yield server, gateway
        finally:
            gateway.stop()
    finally:
        server.stop()


def run_cli(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "TIGER_API_KEY": API_KEY}
    return subprocess.run(
        [sys.executable, "-m", "tiger_grpc.cli", *args],
        input=stdin,
        capture_output=True,
        text=True,
        env=env,
        timeout=180,
        cwd=ROOT,
    )
