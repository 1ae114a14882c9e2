"""An ONNX Runtime session over Tiger's fused graph, with a slotted KV cache.

The cache is one buffer per layer and kind, (slots, kv_heads, max_len, head_dim).
Sequence i of the running batch lives in slot i, so the first n slots are one
contiguous block that a decode step binds as both the past and the present of the
`GroupQueryAttention` nodes: the graph appends in place and nothing is copied per
step. The buffers start `INITIAL_CAPACITY` positions long and double when a
sequence needs more (up to the model's context), and shrink back when the engine is
idle: `GroupQueryAttention` clears a slot's whole row when a prompt is written into
it, so a buffer as long as the full context would cost every new slot hundreds of MB
of page faults.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import onnxruntime as ort

from ..config import Device
from .onnx_model import choose_providers, session_options

log = logging.getLogger(__name__)

INITIAL_CAPACITY = 512


class FusedCausalLM:
    """Prefill one sequence into a slot, or decode one token for slots [0, n)."""

    def __init__(
        self,
        onnx_path: Path,
        device: Device,
        max_batch: int,
        max_len: int | None = None,
    ) -> None:
        self.session = ort.InferenceSession(
            str(onnx_path), session_options(), providers=choose_providers(device)
        )
        self.provider = self.session.get_providers()[0]
        past = [
            i
            for i in self.session.get_inputs()
            if i.name.startswith("past_key_values.")
        ]
        self._past_names = [i.name for i in past]
        self._present_names = [
            n.replace("past_key_values.", "present.") for n in self._past_names
        ]
        _, self.kv_heads, _, self.head_dim = past[0].shape
        cos = next(
            t for t in self._initializer_shapes(onnx_path) if t[0] == "cos_cache"
        )
        self.max_len = min(max_len or cos[1][0], cos[1][0])
        self.max_batch = max_batch
        self.capacity = 0
        self._cache: list[np.ndarray] = []
        self._bindings: dict[tuple[int, int], tuple[ort.IOBinding, np.ndarray]] = {}
        self.vocab_size = int(self.session.get_outputs()[0].shape[-1])
        self.reset()
        log.info(
            "loaded %s on %s (%d slots of %d tokens)",
            onnx_path,
            self.provider,
            max_batch,
            self.max_len,
        )

    @staticmethod
    def _initializer_shapes(onnx_path: Path) -> list[tuple[str, list[int]]]:
        import onnx

        model = onnx.load(str(onnx_path), load_external_data=False)
        return [(t.name, list(t.dims)) for t in model.graph.initializer]

    def reset(self) -> None:
        """Drops every slot's cache and goes back to the initial capacity."""
        self._cache = []
        self._resize(min(INITIAL_CAPACITY, self.max_len))

    def ensure_capacity(self, length: int) -> None:
        """Makes room for sequences of `length` tokens (all slots keep their contents)."""
        if length > self.max_len:
            raise ValueError(f"{length} tokens exceed the cache of {self.max_len}")
        if length > self.capacity:
            self._resize(min(self.max_len, max(length, 2 * self.capacity)))

    def _resize(self, capacity: int) -> None:
        shape = (self.max_batch, self.kv_heads, capacity, self.head_dim)
        grown = []
        for old in self._cache or [None] * len(self._past_names):
            new = np.empty(shape, np.float32)
            if old is None:
                new.fill(0.0)  # fault the pages in now, not in the middle of a step
            else:
                new[:, :, : self.capacity] = old
                new[:, :, self.capacity :] = 0.0
            grown.append(new)
        self._cache, self.capacity = grown, capacity
        self._bindings = {}

    def _binding(self, rows: slice) -> tuple[ort.IOBinding, np.ndarray]:
        """The binding of cache rows `rows` (made once per batch shape and capacity):
        the KV buffers as past and present, logits into a preallocated array."""
        key = (rows.start, rows.stop)
        if key not in self._bindings:
            binding = self.session.io_binding()
            for past, present, buffer in zip(
                self._past_names, self._present_names, self._cache, strict=True
            ):
                value = ort.OrtValue.ortvalue_from_numpy(
                    buffer[rows]
                )  # shares the memory
                binding.bind_ortvalue_input(past, value)
                binding.bind_ortvalue_output(present, value)
            logits = np.empty((rows.stop - rows.start, self.vocab_size), np.float32)
            binding.bind_output(
                "logits", "cpu", 0, np.float32, list(logits.shape), logits.ctypes.data
            )
            self._bindings[key] = (binding, logits)
        return self._bindings[key]

    def _run(
        self, rows: slice, input_ids: np.ndarray, lengths: np.ndarray
    ) -> np.ndarray:
        """Runs the graph for cache rows `rows`; `lengths` are the cached tokens per row."""
        binding, logits = self._binding(rows)
        new = input_ids.shape[1]
        feeds = {
            "input_ids": np.ascontiguousarray(input_ids, dtype=np.int64),
            "seqlens_k": (lengths + new - 1).astype(np.int32),
            "total_sequence_length": np.array(int(lengths.max()) + new, dtype=np.int32),
        }
        for name, array in feeds.items():
            binding.bind_cpu_input(name, array)
        self.session.run_with_iobinding(binding)
        return logits

    def prefill(self, slot: int, token_ids: list[int]) -> np.ndarray:
        """Writes a prompt into an empty slot; returns its last position's logits."""
        self.ensure_capacity(len(token_ids))
        logits = self._run(
            slice(slot, slot + 1), np.asarray([token_ids]), np.zeros(1, np.int64)
        )
        return logits[0].copy()

    def decode(self, tokens: list[int], lengths: list[int]) -> np.ndarray:
        """One token for each of slots [0, n); returns logits (n, vocab)."""
        n = len(tokens)
        self.ensure_capacity(max(lengths) + 1)
        return self._run(
            slice(0, n), np.asarray(tokens)[:, None], np.asarray(lengths)
        ).copy()

    def move(self, src: int, dst: int, length: int) -> None:
        """Moves a sequence's cache to another slot (to keep the batch contiguous)."""
        for buffer in self._cache:
            buffer[dst, :, :length] = buffer[src, :, :length]
