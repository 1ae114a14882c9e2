"""Which fused graph a model is served from: the precisions, the directory each
graph lives in, and the default for a device. The one place for all three."""

from __future__ import annotations

import numpy as np

from ..config import Device
from ..engine.providers import CUDA, choose_providers

# Weight precision -> (quantized bits or None, float type of activations and cache).
# int4 is the CPU default and the fastest there; int8 stays closer to fp32 (on the
# embedded model, top-1 agreement with fp32 of ~93% against ~73% for int4; see
# tests/engine/test_quality.py) at ~3/4 the speed. fp16 is the CUDA graph.
GRAPH_TYPES: dict[str, tuple[int | None, type]] = {
    "int8": (8, np.float32),
    "int4": (4, np.float32),
    "fp16": (None, np.float16),
    "fp32": (None, np.float32),
}
PRECISIONS = tuple(GRAPH_TYPES)
FIDELITY = ("fp32", "fp16", "int8", "int4")  # closest to the source weights first
CPU_DEFAULT, CUDA_DEFAULT = "int4", "fp16"


def default_precision(provider: str) -> str:
    """fp16 where the CUDA provider runs (its attention kernel is fp16/bf16 only),
    int4 on CPU."""
    return CUDA_DEFAULT if provider == CUDA else CPU_DEFAULT


def checked(precision: str, source: str = "TIGER_PRECISION") -> str:
    """`precision` when it is one; a `ValueError` naming the choices otherwise."""
    if precision not in GRAPH_TYPES:
        raise ValueError(
            f"{source} must be one of {', '.join(PRECISIONS)}, got {precision!r}"
        )
    return precision


def resolve_precision(requested: str | None, device: Device) -> str:
    """The precision to serve: `requested` (TIGER_PRECISION or a flag) when it is one
    (a `ValueError` naming the choices if not), else the device's default."""
    if requested:
        return checked(requested)
    return default_precision(choose_providers(device)[0])


def graph_dir(precision: str) -> str:
    """The directory of a model's fused graph of `precision`."""
    return f"fused-{precision}"


def graph_path(precision: str) -> str:
    """The graph file, relative to the model's directory (what manifests record)."""
    return f"{graph_dir(precision)}/model.onnx"
