"""Which fused graph a model is served from: the precisions, the directory each
graph lives in, and the default for a device. The one place for all three."""

from __future__ import annotations

import os
from collections.abc import Mapping

import numpy as np

from ..config import Device
from ..engine.providers import CUDA, provider_for

# Weight precision -> (quantized bits or None, float type of activations and cache).
# int4 is the CPU default and the fastest there (on the embedded model, from the
# GGUF's own blocks: 97.4% top-1 agreement with fp32, its loss the CPU kernels' 8-bit
# activations; see tools/bench_quality.py); int8 is ORT's quantizer over the
# dequantized weights (96%). fp16 is the CUDA graph. On CUDA
# every graph has fp16 activations and cache (ORT's CUDA GroupQueryAttention is
# fp16/bf16 only), so int4 and int8 mean int4-fp16 and int8-fp16 there.
GRAPH_TYPES: dict[str, tuple[int | None, type]] = {
    "int8": (8, np.float32),
    "int4": (4, np.float32),
    "int4-kv8": (4, np.float32),
    "fp16": (None, np.float16),
    "fp32": (None, np.float32),
    "int8-fp16": (8, np.float16),
    "int4-fp16": (4, np.float16),
}
PRECISIONS = tuple(GRAPH_TYPES)
# The graphs whose KV cache is int8 (`graph.kvcache`): int4-kv8 is int4 with a
# quarter of the cache's memory, at a measured cost in quality (on the embedded
# model, top-1 agreement with fp32 97.5% -> 96.3%, KL 0.0023 -> 0.0037: under the
# default's 97% bar, hence not the default).
INT8_CACHE = frozenset({"int4-kv8"})
ON_CUDA = {"int8": "int8-fp16", "int4": "int4-fp16", "int4-kv8": "int4-fp16"}
# Closest to the source weights first; on CPU, the fp16-activation graphs last.
FIDELITY = ("fp32", "fp16", "int8", "int4", "int4-kv8", "int8-fp16", "int4-fp16")
CPU_DEFAULT, CUDA_DEFAULT = "int4", "fp16"
# A model without a fused graph serves from its optimum export, float32.
OPTIMUM_PRECISION = "fp32"


def default_precision(provider: str) -> str:
    """fp16 where the CUDA provider runs, int4 on CPU."""
    return CUDA_DEFAULT if provider == CUDA else CPU_DEFAULT


def runs_on(precision: str, provider: str) -> bool:
    """Whether a graph of `precision` serves on `provider`: on CUDA, only those
    with fp16 activations (float32 ones would put attention on the CPU)."""
    return provider != CUDA or GRAPH_TYPES[precision][1] is np.float16


def checked(precision: str, source: str = "TIGER_PRECISION") -> str:
    """`precision` when it is one; a `ValueError` naming the choices otherwise."""
    if precision not in GRAPH_TYPES:
        raise ValueError(
            f"{source} must be one of {', '.join(PRECISIONS)}, got {precision!r}"
        )
    return precision


def on_cuda(precision: str) -> str:
    """`precision`'s graph on CUDA: int4 and int8 are their fp16-activation graphs;
    one CUDA does not serve (fp32) is a `ValueError` saying why."""
    found = ON_CUDA.get(precision, precision)
    if not runs_on(found, CUDA):
        raise ValueError(
            f"on CUDA the fused graphs have fp16 activations (ORT's CUDA "
            f"GroupQueryAttention is fp16/bf16 only), so {found} does not "
            "serve there: set TIGER_PRECISION to fp16, int8 or int4, or "
            "TIGER_DEVICE=cpu"
        )
    return found


def resolve_precision(requested: str | None, device: Device) -> str:
    """The precision to serve: `requested` (TIGER_PRECISION or a flag) when it is one
    (a `ValueError` naming the choices if not), else the device's default; on CUDA,
    as `on_cuda` has it."""
    provider = provider_for(device)
    if not requested:
        return default_precision(provider)
    precision = checked(requested)
    return on_cuda(precision) if provider == CUDA else precision


def precision_from_env(flag: str | None = None) -> str:
    """`resolve_precision` of a flag, else TIGER_PRECISION, for TIGER_DEVICE."""
    requested = flag or os.environ.get("TIGER_PRECISION")
    return resolve_precision(requested, Device(os.environ.get("TIGER_DEVICE", "auto")))


def served_precision(
    graphs: Mapping[str, str], precision: str, provider: str
) -> str | None:
    """Which of a model's fused `graphs` (precision -> path) serves on `provider`:
    the configured `precision`, else the device's own (fp16 on CUDA), else the
    closest to the weights of those that run there; None when none does (the
    optimum export serves)."""
    preference = (precision, default_precision(provider), *FIDELITY)
    return next((p for p in preference if p in graphs and runs_on(p, provider)), None)


def graph_dir(precision: str) -> str:
    """The directory of a model's fused graph of `precision`."""
    return f"fused-{precision}"


def graph_path(precision: str) -> str:
    """The graph file, relative to the model's directory (what manifests record)."""
    return f"{graph_dir(precision)}/model.onnx"
