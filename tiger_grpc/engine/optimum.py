"""An ONNX Runtime session over an optimum `text-generation-with-past` export: the
runner for models without a fused graph, and the fp32 reference of the quality
tests."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort

from ..config import Device
from .providers import choose_providers, in_use, session_options

log = logging.getLogger(__name__)


@dataclass
class KVCache:
    """Per-layer keys and values, (batch, kv_heads, length, head_dim) each."""

    arrays: list[np.ndarray]

    @property
    def length(self) -> int:
        return int(self.arrays[0].shape[2]) if self.arrays else 0


class OnnxCausalLM:
    """Runs one forward step: new token ids plus the KV cache in, logits out."""

    def __init__(
        self, onnx_path: Path, device: Device = Device.AUTO, spin: bool = True
    ) -> None:
        self.session = ort.InferenceSession(
            str(onnx_path), session_options(spin), providers=choose_providers(device)
        )
        self.provider = in_use(self.session, device, str(onnx_path))
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
        self, token_ids: list[int], cache: KVCache, every_position: bool = False
    ) -> tuple[np.ndarray, KVCache]:
        """Feeds `token_ids` after the cached ones; returns the last position's
        logits (every new position's, (len(token_ids), vocab), if asked)."""
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
        rows = logits[0] if every_position else logits[0, -1]
        return rows.astype(np.float32, copy=False), KVCache(present)
