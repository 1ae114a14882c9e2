"""Decode steps through CUDA graphs, and the lock that keeps their capture safe.

On CUDA a decode step replays a CUDA graph, one per batch size, captured by ONNX
Runtime the first time that size runs (`enable_cuda_graph`, one `gpu_graph_id`
per size): launching a step's ~450 kernels one by one from the CPU left an H200
idle for 1.2 ms of an 8B model's 6.1 ms step. A graph reads and writes fixed
addresses, so a decode step's token ids, lengths and logits live in buffers of
their own (per batch size) on the device, written in place, and the attention's
total length (which its kernels read on the host) is the cache's capacity, fixed
while the cache lives: the lengths that matter are each sequence's own, on the
device. Prefill runs outside the graphs (`gpu_graph_id` -1). A new cache (new
addresses) takes new graph ids.

While a graph is captured no other thread may allocate or synchronize on the GPU
(CUDA invalidates the capture), so every fused model's GPU work (loading, steps,
cache copies) takes one process-wide lock; on CPU nothing is locked. (A model
served from its optimum export, `OnnxCausalLM`, does not take it.) On CPU the same
decode path runs without capture (the tests exercise it there).
"""

from __future__ import annotations

import contextlib
import functools
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

import numpy as np
import onnxruntime as ort

GPU_LOCK = threading.RLock()
_F = TypeVar("_F", bound=Callable[..., Any])


@contextlib.contextmanager
def gpu_work(on_gpu: bool) -> Iterator[None]:
    """Holds `GPU_LOCK` for work on the GPU; nothing on CPU."""
    if not on_gpu:
        yield
        return
    with GPU_LOCK:
        yield


def on_gpu(method: _F) -> _F:
    """Runs a model's method under `GPU_LOCK` when the model is on CUDA."""

    @functools.wraps(method)
    def locked(self: Any, *args: Any, **kwargs: Any) -> Any:
        with gpu_work(self.device_type == "cuda"):
            return method(self, *args, **kwargs)

    return locked  # type: ignore[return-value]


class Model(Protocol):
    """What the decoder needs of a model (`FusedCausalLM`)."""

    device_type: str
    vocab_size: int
    capacity: int
    max_batch: int

    def bind_cache(self, rows: slice) -> ort.IOBinding: ...


@dataclass
class GraphStep:
    """What one batch size's captured decode step reads and writes (the ORT values
    must outlive the graph: it holds their addresses)."""

    binding: ort.IOBinding
    ids: ort.OrtValue
    lengths: ort.OrtValue
    logits: ort.OrtValue
    total: np.ndarray
    options: ort.RunOptions


class GraphDecoder:
    """A model's decode steps, one `GraphStep` per batch size."""

    def __init__(self, session: ort.InferenceSession) -> None:
        self.session = session
        self.steps: dict[int, GraphStep] = {}
        self.epoch = 0
        self.outside = ort.RunOptions()  # prefill: no capture, no replay
        self.outside.add_run_config_entry("gpu_graph_id", "-1")

    def drop(self) -> None:
        """The cache moved: graphs captured on its old addresses are never replayed
        again (ORT keeps them; the next ones get new ids)."""
        self.steps = {}
        self.epoch += 1

    def decode(self, model: Model, tokens: list[int], lengths: list[int]) -> np.ndarray:
        n = len(tokens)
        step = self.steps.get(n) or self._step(model, n)
        step.ids.update_inplace(np.asarray(tokens, np.int64).reshape(n, 1))
        step.lengths.update_inplace(np.asarray(lengths, np.int32))  # seqlens_k
        self.session.run_with_iobinding(step.binding, step.options)
        logits = step.logits.numpy()  # from a GPU: a new host array; on CPU, a view
        return logits.copy() if model.device_type == "cpu" else logits

    def _step(self, model: Model, n: int) -> GraphStep:
        """The binding for slots [0, n): the cache rows, and device buffers of its
        own for the token ids, the lengths and the logits; one graph id."""
        binding = model.bind_cache(slice(0, n))

        def buffer(dims: list[int], dtype: type) -> ort.OrtValue:
            return ort.OrtValue.ortvalue_from_shape_and_type(
                dims, dtype, model.device_type, 0
            )

        step = GraphStep(
            binding=binding,
            ids=buffer([n, 1], np.int64),
            lengths=buffer([n], np.int32),
            logits=buffer([n, model.vocab_size], np.float32),
            total=np.array(model.capacity, np.int32),
            options=ort.RunOptions(),
        )
        binding.bind_ortvalue_input("input_ids", step.ids)
        binding.bind_ortvalue_input("seqlens_k", step.lengths)
        binding.bind_cpu_input("total_sequence_length", step.total)
        binding.bind_ortvalue_output("logits", step.logits)
        graph_id = self.epoch * (model.max_batch + 1) + n
        step.options.add_run_config_entry("gpu_graph_id", str(graph_id))
        self.steps[n] = step
        return step
