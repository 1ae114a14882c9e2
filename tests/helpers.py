"""What the tests share besides fixtures: the key, the process starters, the engine
test collector, and the reference computations."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from tiger_grpc.api.events import Delta, Event, Failure, Stop
from tiger_grpc.engine.detok import IncrementalDetokenizer
from tiger_grpc.engine.sampling import Sampler, SamplingParams
from tiger_grpc.engine.sequence import Sequence
from tiger_grpc.engine.stopping import StopSequenceMatcher, TokenStopper
from tiger_grpc.models.embedded import DEFAULT_MODEL_ID
from tiger_grpc.models.store import ModelManifest, ModelStore
from tiger_grpc.runtime.process import Process, start_process
from tiger_grpc.testing import TINY_MODEL_ID

__all__ = ["DEFAULT_MODEL_ID", "TINY_MODEL_ID", "Process"]

ROOT = Path(__file__).resolve().parent.parent
API_KEY = "test-key-123"
LOCAL = ("--port", "0", "--host", "127.0.0.1")  # a free port, loopback only
PROMPT = [1, 4093, 198, 19556, 28, 1317, 314, 216, 2]  # a chat prompt's token ids


def graph(store_home: Path, tiny_model: ModelManifest, precision: str = "fp32") -> Path:
    """The tiny model's fused graph of `precision`."""
    return (
        ModelStore(store_home).path(tiny_model.id) / tiny_model.fused_graphs[precision]
    )


def process_env(store_home: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.update(TIGER_HOME=str(store_home), TIGER_API_KEY=API_KEY, PYTHONUNBUFFERED="1")
    return env


def start_server(workdir: Path, name: str, env: dict[str, str], *flags: str) -> Process:
    """`tiger-server` on a free local port (metrics on another)."""
    if "--metrics-port" not in flags:
        flags = (*flags, "--metrics-port", "0")
    args = ["tiger_grpc.server", *LOCAL, *flags]
    return start_process(args, workdir, name, env, cwd=ROOT)


def start_gateway(
    workdir: Path, name: str, env: dict[str, str], target: str, *flags: str
) -> Process:
    """`tiger-gateway` on a free local port, in front of `target`."""
    args = ["gateway.main", *LOCAL, "--grpc-target", target, *flags]
    return start_process(args, workdir, name, env, cwd=ROOT)


@contextlib.contextmanager
def stack(
    store_home: Path,
    workdir: Path,
    server_args: tuple[str, ...] = (),
    gateway_args: tuple[str, ...] = (),
    env: dict[str, str | None] | None = None,
) -> Iterator[tuple[Process, Process]]:
    """A server (without preparing the default model) and a gateway in front of it, of a
    test's own, stopped at the end; `env` adds variables (None removes one)."""
    merged = process_env(store_home)
    for name, value in (env or {}).items():
        if value is None:
            merged.pop(name, None)
        else:
            merged[name] = value
    server = start_server(workdir, "own-server", merged, "--no-prepare", *server_args)
    try:
        gateway = start_gateway(
            workdir, "own-gateway", merged, f"127.0.0.1:{server.port}", *gateway_args
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
        [sys.executable, "-m", "tiger_grpc.client.cli", *args],
        input=stdin,
        capture_output=True,
        text=True,
        env=env,
        timeout=180,
        cwd=ROOT,
    )


class Collector:
    """Collects a sequence's events on the decode thread."""

    def __init__(self) -> None:
        self.events: list[Event] = []
        self.done = threading.Event()

    def __call__(self, event: Event) -> None:
        self.events.append(event)
        if isinstance(event, Stop | Failure):
            self.done.set()

    @property
    def text(self) -> str:
        return "".join(e.text for e in self.events if isinstance(e, Delta))


def sequence(tokenizer, collector: Collector, max_tokens: int, **sampling) -> Sequence:
    """An engine sequence of `PROMPT`, its events going to `collector`."""
    return Sequence(
        prompt_ids=list(PROMPT),
        sampler=Sampler(SamplingParams(**sampling)),
        stopper=TokenStopper([], max_tokens),
        stop_matcher=StopSequenceMatcher([]),
        detokenizer=IncrementalDetokenizer(tokenizer),
        emit=collector,
    )


def torch_logits(model, ids: list[int]) -> np.ndarray:
    """The PyTorch reference's logits of every position."""
    import torch

    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0].numpy()
