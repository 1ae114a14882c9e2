"""An ONNX Runtime session over Tiger's fused graph, with a slotted KV cache that
lives on the session's device.

The cache is one buffer per layer and kind, (slots, kv_heads, capacity, head_dim),
in the graph's cache type (fp32 on CPU, int8 for int4-kv8, fp16 for CUDA),
allocated as ORT values on the device the session runs on: host memory on CPU,
GPU memory on CUDA. Sequence i of the running batch lives in slot i, so the first
n slots are one contiguous block that a step binds (by address, through IO
binding) as both the past and the present of the `GroupQueryAttention` nodes: the
graph appends in place and nothing is copied per step. Per step only the new
token ids and lengths go to the device, and only the last position's logits come
back (the sampler needs them).

On CUDA (Ampere and later, where ORT's attention is flash attention) the cache is
allocated whole when the model loads, as long as the memory budget allows (most of
the GPU memory left after the weights, as vLLM does), in one allocation. On CPU
the buffers start `INITIAL_CAPACITY` positions long, double when a sequence needs
more (up to the model's context or the budget), and shrink back when the engine is
idle, down to what the rows the prefix cache keeps need: host memory is only
spent on what is used. Growing copies only the rows whose contents matter (the
batch, the prompt being written, the kept prefixes): copying all 16 slots made a
2,100-token prompt's growth to 4,096 positions cost 3.8-5.8 s (3 GB written and
faulted in), against 0.16 s for its own row. Growing, zeroing and copying a slot
(whole, or its first positions, head by head) are device-side copies, run by a
second tiny graph (`Pad`) on the same execution provider, so CPU and CUDA share
this code, and the CPU tests exercise the CUDA path's logic.

On CUDA decode steps replay CUDA graphs (`cudagraph`); attention is ORT's flash
(`TIGER_CUDA_ATTENTION`: cuDNN's SDPA plans each new shape, 45-780 ms on an H100).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from ..config import CPU_MAX_BATCH, CUDA_MAX_BATCH, Device, cuda_graphs
from .cudagraph import GraphDecoder, gpu_work, on_gpu
from .device import CACHE_TYPES, Block, DeviceBuffers
from .providers import (
    CUDA,
    choose_providers,
    cuda_compute_major,
    cuda_options,
    default_cuda_cache_gb,
    in_use,
    session_options,
)

log = logging.getLogger(__name__)

INITIAL_CAPACITY = 512


class FusedCausalLM:
    """Prefill one sequence into a slot, or decode one token for slots [0, n)."""

    def __init__(
        self,
        onnx_path: Path,
        device: Device,
        max_batch: int | None = None,
        max_len: int | None = None,
        cache_gb: float | None = None,
        preallocate: bool | None = None,
        spin: bool = True,
        graphs: bool | None = None,
        attention: str | None = None,
    ) -> None:
        providers = choose_providers(device)
        flash = CUDA in providers and (cuda_compute_major() or 8) >= 8
        chosen = graphs is None
        if graphs is None:  # with a preallocated cache: its addresses never move
            graphs = flash and (preallocate is None or preallocate) and cuda_graphs()
        asked: list[str | tuple[str, dict[str, str]]] = list(providers)
        if CUDA in providers:
            asked[providers.index(CUDA)] = (CUDA, cuda_options(graphs, attention))
        with gpu_work(CUDA in providers):
            self._load(onnx_path, device, asked, spin, graphs)
            self._size(onnx_path, max_batch, max_len, cache_gb, preallocate, flash)
            self._buffers = DeviceBuffers(
                len(self._past_names), self.dtype, providers, self.device_type
            )
            self.reset()
        if chosen and self.device_type != "cuda":  # `auto` that fell back to CPU
            self.graphs = False
        log.info(
            "loaded %s on %s (%s cache, %d slots of up to %d tokens%s)",
            onnx_path,
            self.provider,
            np.dtype(self.dtype).name,
            self.max_batch,
            self.max_len,
            ", CUDA graphs" if self.graphs and self.device_type == "cuda" else "",
        )

    def _load(
        self,
        onnx_path: Path,
        device: Device,
        asked: list[Any],
        spin: bool,
        graphs: bool,
    ) -> None:
        self.session = ort.InferenceSession(
            str(onnx_path), session_options(spin), providers=asked
        )
        self.provider = in_use(self.session, device, str(onnx_path))
        self.device_type = "cuda" if self.provider == CUDA else "cpu"
        # Decode through fixed buffers and graph ids (on CPU the same code runs,
        # without capture: the tests exercise it there).
        self.graphs = bool(graphs)
        self._decoder = GraphDecoder(self.session)
        self._read_cache_inputs()

    def _size(
        self,
        onnx_path: Path,
        max_batch: int | None,
        max_len: int | None,
        cache_gb: float | None,
        preallocate: bool | None,
        flash: bool,
    ) -> None:
        cuda = self.device_type == "cuda"
        self.max_batch = max_batch or (CUDA_MAX_BATCH if cuda else CPU_MAX_BATCH)
        # Bytes of cache one token takes in every layer: the budget caps the length.
        self.token_bytes = (
            len(self._past_names)
            * self.kv_heads
            * self.head_dim
            * np.dtype(self.dtype).itemsize
        )
        self.max_len = self._longest(onnx_path, max_len, cache_gb, cuda)
        # On CUDA the cache is allocated whole at load time, as big as the budget
        # allows (as vLLM does): no growth copy ever needs old and new buffers at
        # once, and nothing is allocated mid-stream. On CPU it grows on demand.
        if preallocate is None:
            # Preallocation needs flash attention (Ampere and later): without it,
            # ORT's GQA makes scratch buffers as long as the whole cache per call.
            preallocate = cuda and flash
        self.fixed = preallocate
        self.capacity = 0
        self._cache: Block | None = None
        self._bindings: dict[tuple[int, int], tuple[ort.IOBinding, np.ndarray]] = {}
        self.vocab_size = int(self.session.get_outputs()[0].shape[-1])

    def _longest(
        self, onnx_path: Path, max_len: int | None, cache_gb: float | None, cuda: bool
    ) -> int:
        """The longest sequence: the graph's RoPE table, `max_len`, and what the
        cache budget (GiB; on CUDA by default most of the free memory) allows for
        `max_batch` of them."""
        cos = next(
            t for t in self._initializer_shapes(onnx_path) if t[0] == "cos_cache"
        )
        longest = min(max_len or cos[1][0], cos[1][0])
        if cache_gb is None and cuda:
            cache_gb = default_cuda_cache_gb()
        if cache_gb is None:
            return longest
        fits = int(cache_gb * 2**30) // (self.token_bytes * self.max_batch)
        if fits < 1:
            raise ValueError(
                f"a KV cache of {cache_gb} GiB does not fit one token for each "
                f"of {self.max_batch} slots"
            )
        return min(longest, fits)

    def _read_cache_inputs(self) -> None:
        """The KV cache's names, heads, head size and float type, from the graph."""
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
        self.dtype = CACHE_TYPES[past[0].type]

    @staticmethod
    def _initializer_shapes(onnx_path: Path) -> list[tuple[str, list[int]]]:
        import onnx

        model = onnx.load(str(onnx_path), load_external_data=False)
        return [(t.name, list(t.dims)) for t in model.graph.initializer]

    def _shape(self, capacity: int) -> tuple[int, int, int, int]:
        return (self.max_batch, self.kv_heads, capacity, self.head_dim)

    def _row_bytes(self, capacity: int | None = None) -> int:
        length = self.capacity if capacity is None else capacity
        return self.kv_heads * length * self.head_dim * self._buffers.itemsize

    @on_gpu
    def reset(self) -> None:
        """Drops every slot's cache and goes back to the initial capacity (on CUDA,
        the whole cache: it is allocated once, up front)."""
        self._cache = None  # freed before the new one is made
        self._forget_bindings()
        self.capacity = (
            self.max_len if self.fixed else min(INITIAL_CAPACITY, self.max_len)
        )
        # A GPU's memory is zeroed: it may hold anything. The host's comes fresh
        # from the OS, and no position past a row's length is ever read (as after
        # a growth), so its pages are left to be faulted in as sequences write
        # them: an idle server holds no KV it does not use (16 rows of 512
        # positions of the embedded model are 377 MB).
        zero = self.device_type != "cpu"
        self._cache = self._buffers.allocate(self._shape(self.capacity), zero=zero)

    @on_gpu
    def shrink(self, keep: Mapping[int, int] | None = None) -> None:
        """Gives a grown cache back (call when no sequence runs): down to the
        initial capacity, or to what the rows in `keep` need (row: the positions
        that matter in it), which keep their contents."""
        if self.fixed:
            return
        needed = max((keep or {}).values(), default=0)
        capacity = INITIAL_CAPACITY
        while capacity < needed:
            capacity *= 2
        capacity = min(capacity, self.max_len)
        if capacity >= self.capacity:
            return
        if keep:
            self._resize(capacity, keep)
        else:
            self.reset()

    @on_gpu
    def ensure_capacity(
        self, length: int, rows: Mapping[int, int] | None = None
    ) -> None:
        """Makes room for sequences of `length` tokens. `rows` says which rows keep
        their contents and how many positions of each (the others are left
        undefined); None: all of every row."""
        if length > self.max_len:
            raise ValueError(f"{length} tokens exceed the cache of {self.max_len}")
        if length <= self.capacity:
            return
        capacity = min(self.max_len, max(length, 2 * self.capacity))
        if rows is not None:
            self._resize(capacity, rows)
            return
        grown = self._buffers.allocate(self._shape(capacity), zero=False)
        self._buffers.copy(
            self._block.addresses,
            self._shape(self.capacity),
            grown.addresses,
            self._shape(capacity),
            [0, 0, 0, 0, 0, 0, capacity - self.capacity, 0],
        )
        self._cache, self.capacity = grown, capacity
        self._forget_bindings()

    def _resize(self, capacity: int, rows: Mapping[int, int]) -> None:
        """A new cache `capacity` positions long, with the first positions of the
        rows in `rows` (row: how many). Only what is copied is touched: on CPU the
        rest is not even faulted in until a sequence writes it."""
        resized = self._buffers.allocate(self._shape(capacity), zero=False)
        for row, length in sorted(rows.items()):
            self._copy(
                (self._block, self.capacity, row),
                (resized, capacity, row),
                min(length, self.capacity, capacity),
            )
        self._cache, self.capacity = resized, capacity
        self._forget_bindings()

    def _forget_bindings(self) -> None:
        """The cache moved: every binding made on its addresses, and every graph
        captured on them, is dropped (the next ones are made on the new cache)."""
        self._bindings = {}
        self._decoder.drop()

    def _copy(
        self,
        source: tuple[Block, int, int],
        target: tuple[Block, int, int],
        length: int,
    ) -> None:
        """Copies the first `length` positions of a row to a row: each given as
        (block, its capacity, row). A row's KV heads each hold their positions
        contiguously, so this is a copy per head (or one of the whole row, when it
        is all of it), and it costs what it holds, not the capacity."""
        (src, src_capacity, src_row), (dst, dst_capacity, dst_row) = source, target
        if length <= 0:
            return
        item = self._buffers.itemsize
        if length == src_capacity == dst_capacity:
            heads, shape = 1, (1, self.kv_heads, length, self.head_dim)
        else:
            heads, shape = self.kv_heads, (1, 1, length, self.head_dim)
        for h in range(heads):
            src_at = self._row_bytes(src_capacity) * src_row
            dst_at = self._row_bytes(dst_capacity) * dst_row
            src_at += h * src_capacity * self.head_dim * item
            dst_at += h * dst_capacity * self.head_dim * item
            self._buffers.copy(
                [start + src_at for start in src.addresses],
                shape,
                [start + dst_at for start in dst.addresses],
                shape,
            )

    def bind_cache(self, rows: slice) -> ort.IOBinding:
        """A binding with cache rows `rows` as both past and present."""
        binding = self.session.io_binding()
        shape = [rows.stop - rows.start, self.kv_heads, self.capacity, self.head_dim]
        offset = rows.start * self._row_bytes()
        for past, present, start in zip(
            self._past_names, self._present_names, self._block.addresses, strict=True
        ):
            device = (self.device_type, 0, self.dtype, shape, start + offset)
            binding.bind_input(past, *device)
            binding.bind_output(present, *device)
        return binding

    def _binding(self, rows: slice) -> tuple[ort.IOBinding, np.ndarray]:
        """The binding of cache rows `rows` (made once per batch shape and capacity):
        the KV buffers' rows as past and present, logits into a host array."""
        key = (rows.start, rows.stop)
        if key not in self._bindings:
            binding = self.bind_cache(rows)
            logits = np.empty((rows.stop - rows.start, self.vocab_size), np.float32)
            binding.bind_output(
                "logits", "cpu", 0, np.float32, list(logits.shape), logits.ctypes.data
            )
            self._bindings[key] = (binding, logits)
        return self._bindings[key]

    def _run(
        self, rows: slice, input_ids: np.ndarray, lengths: np.ndarray
    ) -> np.ndarray:
        """Runs the graph for cache rows `rows`; `lengths` are the cached tokens per
        row."""
        binding, logits = self._binding(rows)
        new = input_ids.shape[1]
        feeds = {
            "input_ids": np.ascontiguousarray(input_ids, dtype=np.int64),
            "seqlens_k": (lengths + new - 1).astype(np.int32),
            "total_sequence_length": np.array(int(lengths.max()) + new, dtype=np.int32),
        }
        for name, array in feeds.items():
            binding.bind_cpu_input(name, array)
        if self.graphs:
            self.session.run_with_iobinding(binding, self._decoder.outside)
        else:
            self.session.run_with_iobinding(binding)
        return logits

    @on_gpu
    def prefill(self, slot: int, token_ids: list[int], start: int = 0) -> np.ndarray:
        """Writes `token_ids[start:]` into a slot that holds `token_ids[:start]`
        (nothing when `start` is 0); returns the last position's logits. A long
        prompt can so be written a chunk at a time."""
        self.ensure_capacity(len(token_ids))
        logits = self._run(
            slice(slot, slot + 1),
            np.asarray([token_ids[start:]]),
            np.array([start], np.int64),
        )
        return logits[0].copy()

    @on_gpu
    def decode(self, tokens: list[int], lengths: list[int]) -> np.ndarray:
        """One token for each of slots [0, n); returns logits (n, vocab)."""
        n = len(tokens)
        self.ensure_capacity(max(lengths) + 1)
        if not self.graphs:
            return self._run(
                slice(0, n), np.asarray(tokens)[:, None], np.asarray(lengths)
            ).copy()
        return self._decoder.decode(self, tokens, lengths)

    @on_gpu
    def move(self, src: int, dst: int, length: int | None = None) -> None:
        """Copies a slot's cache to another slot (to keep the batch contiguous, or
        to share a prefix): its first `length` positions, or its whole row."""
        cache = (self._block, self.capacity)
        length = self.capacity if length is None else min(length, self.capacity)
        self._copy((*cache, src), (*cache, dst), length)

    def cache_bytes(self) -> int:
        """Device memory the KV cache holds now."""
        return len(self._past_names) * self.max_batch * self._row_bytes()

    @property
    def _block(self) -> Block:
        assert self._cache is not None, "the cache is being replaced"
        return self._cache
