"""An ONNX Runtime session over an optimum `text-generation-with-past` export."""

from __future__ import annotations

import ctypes
import functools
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort

from ..config import Device

log = logging.getLogger(__name__)

CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"


def cuda_can_load() -> bool:
    """True when ORT has a CUDA provider and this machine has an NVIDIA driver.

    Asking ORT for CUDA without a driver works but logs a loud failure and falls
    back to CPU, so it is only asked for when it can load.
    """
    if CUDA not in ort.get_available_providers():
        return False
    try:
        ctypes.CDLL("libcuda.so.1")
    except OSError:
        return False
    return True


def choose_providers(device: Device) -> list[str]:
    """The providers to ask ORT for, best first (decided once per device setting)."""
    return list(_providers(device))


@functools.cache
def _providers(device: Device) -> tuple[str, ...]:
    if device is Device.CPU:
        return (CPU,)
    if device is Device.CUDA or cuda_can_load():
        if hasattr(ort, "preload_dlls"):
            try:
                # CUDA and cuDNN from NVIDIA's pip packages, when installed.
                ort.preload_dlls()
            except Exception as exc:  # noqa: BLE001 - fall back, and say so
                log.warning("could not preload CUDA libraries: %s", exc)
        return (CUDA, CPU)
    return (CPU,)


def session_options() -> ort.SessionOptions:
    options = ort.SessionOptions()
    options.log_severity_level = 3
    # ORT's worker threads spin while waiting for work: good inside a step (hundreds
    # of small parallel sections), bad after it, where they would take the cores from
    # the sampling, the gRPC threads and the gateway. Spin within a run, stop after.
    spin = os.environ.get("TIGER_ORT_SPIN", "1")
    options.add_session_config_entry("session.intra_op.allow_spinning", spin)
    options.add_session_config_entry("session.force_spinning_stop", "1")
    return options


@dataclass
class KVCache:
    """Per-layer keys and values, (batch, kv_heads, length, head_dim) each."""

    arrays: list[np.ndarray]

    @property
    def length(self) -> int:
        return int(self.arrays[0].shape[2]) if self.arrays else 0


class OnnxCausalLM:
    """Runs one forward step: new token ids plus the KV cache in, logits out."""

    def __init__(self, onnx_path: Path, device: Device = Device.AUTO) -> None:
        self.session = ort.InferenceSession(
            str(onnx_path), session_options(), providers=choose_providers(device)
        )
        self.provider = self.session.get_providers()[0]
        log.info("loaded %s on %s", onnx_path, self.provider)
        inputs = {i.name: i for i in self.session.get_inputs()}
        self._past_names = [n for n in inputs if n.startswith("past_key_values.")]
        self._present_names = [
            o.name for o in self.session.get_outputs() if o.name.startswith("present.")
        ]
        self._has_position_ids = "position_ids" in inputs
        if self._past_names:
            shape = inputs[self._past_names[0]].shape
            self.num_kv_heads, self.head_dim = int(shape[1]), int(shape[3])
        dtype = (
            inputs[self._past_names[0]].type if self._past_names else "tensor(float)"
        )
        self.kv_dtype = np.float16 if "float16" in dtype else np.float32
        self._output_names = ["logits", *self._present_names]

    def empty_cache(self, batch: int = 1) -> KVCache:
        shape = (batch, self.num_kv_heads, 0, self.head_dim)
        return KVCache([np.zeros(shape, self.kv_dtype) for _ in self._past_names])

    def forward(
        self, token_ids: list[int], cache: KVCache
    ) -> tuple[np.ndarray, KVCache]:
        """Feeds `token_ids` after the cached ones; returns the last position's logits."""
        past = cache.length
        total = past + len(token_ids)
        feed: dict[str, np.ndarray] = {
            "input_ids": np.asarray([token_ids], dtype=np.int64),
            "attention_mask": np.ones((1, total), dtype=np.int64),
        }
        if self._has_position_ids:
            feed["position_ids"] = np.arange(past, total, dtype=np.int64)[None, :]
        feed.update(zip(self._past_names, cache.arrays, strict=True))
        logits, *present = self.session.run(self._output_names, feed)
        return logits[0, -1].astype(np.float32, copy=False), KVCache(present)
