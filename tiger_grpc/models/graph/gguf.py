"""A GGUF file's quantized blocks, as `MatMulNBits` takes them: no second rounding.

llama.cpp's Q4_0, Q4_1 and Q8_0 are blocks of 32 weights along the input, each with
an fp16 scale `d`:

- Q4_0: w = d * (q - 8), q in 0..15: `MatMulNBits`'s 4-bit symmetric form as it is.
- Q4_1: w = d * q + m, with a minimum `m`. Written as d * (q - 8) + (m + 8d), that is
  the 4-bit symmetric product plus, per block, `m + 8d` times the sum of the block's
  inputs: `x W = MatMulNBits(x; q, d) + S(x) C`, where S sums x over each block of
  32 and C holds the blocks' offsets (32 times fewer rows than W).
- Q8_0: w = d * q, q int8: the 8-bit symmetric form, q shifted by 128.

Only the nibble order differs: ggml keeps elements j and j + 16 in byte j, ORT
elements 2j and 2j + 1. llama.cpp's converter also permutes the rows of the query
and key projections (its rotary layout); they are put back as transformers does.
Other block types are not read here: their weights take ORT's quantizer.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

BLOCK = 32
_LAYER = {
    "self_attn.q_proj": "attn_q",
    "self_attn.k_proj": "attn_k",
    "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output",
    "mlp.gate_proj": "ffn_gate",
    "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down",
}


@dataclass(frozen=True)
class Blocks:
    """One weight (N outputs, K inputs) in `MatMulNBits`'s layout: `packed` (N,
    K/32, 32 * bits / 8) uint8, `scales` (N, K/32) float32, and for Q4_1 the
    blocks' offsets `m + 8d` (N, K/32) float32."""

    kind: str
    bits: int
    packed: np.ndarray
    scales: np.ndarray
    offsets: np.ndarray | None

    def dequantize(self) -> np.ndarray:
        """The (N, K) float32 weights these blocks stand for."""
        q = _unpack_ort(self.packed, self.bits).astype(np.float32)
        zero = 8 if self.bits == 4 else 128
        w = (q - zero) * self.scales[..., None]
        if self.offsets is not None:
            w += self.offsets[..., None]
        return w.reshape(w.shape[0], -1)


class GgufBlocks:
    """The Q4_0/Q4_1/Q8_0 projections of a Llama GGUF file, by HF parameter name."""

    def __init__(self, path: Path, heads: int, kv_heads: int) -> None:
        from gguf import GGUFReader

        self.path = path
        self._tensors = {t.name: t for t in GGUFReader(path).tensors}
        self._heads = {"attn_q": heads, "attn_k": kv_heads}

    def kinds(self) -> set[str]:
        """The block types of the file's tensors."""
        return {t.tensor_type.name for t in self._tensors.values()}

    def __call__(self, key: str) -> Blocks | None:
        """The blocks of HF parameter `key`, or None when the file has it in another
        type (or not at all)."""
        name = _gguf_name(key)
        tensor = self._tensors.get(name or "")
        if tensor is None or tensor.tensor_type.name not in _READERS:
            return None
        kind = tensor.tensor_type.name
        raw = np.asarray(tensor.data, dtype=np.uint8)
        rows = raw.shape[0]
        blocks = _READERS[kind](raw.reshape(rows, -1, _BLOCK_BYTES[kind]))
        short = name.split(".")[-2] if name and name.startswith("blk.") else ""
        if short in self._heads:  # llama.cpp's rotary row order, put back
            blocks = _unpermute(blocks, self._heads[short])
        return blocks


def _gguf_name(key: str) -> str | None:
    if key in ("model.embed_tokens.weight", "lm_head.weight"):
        # A tied head is the embedding; an untied one is `output`.
        return "token_embd.weight" if key.startswith("model.") else "output.weight"
    parts = key.split(".")
    if len(parts) == 6 and parts[:2] == ["model", "layers"] and parts[5] == "weight":
        short = _LAYER.get(f"{parts[3]}.{parts[4]}")
        return f"blk.{parts[2]}.{short}.weight" if short else None
    return None


def _half(raw: np.ndarray, at: int) -> np.ndarray:
    return raw[..., at : at + 2].copy().view(np.float16)[..., 0].astype(np.float32)


def _nibbles_ggml(qs: np.ndarray) -> np.ndarray:
    """ggml's 16 bytes -> the 32 4-bit values (element j low, j + 16 high)."""
    return np.concatenate([qs & 0x0F, qs >> 4], axis=-1)


def _pack_ort(values: np.ndarray) -> np.ndarray:
    """32 4-bit values -> ORT's 16 bytes (element 2j low, 2j + 1 high)."""
    return (values[..., 0::2] | (values[..., 1::2] << 4)).astype(np.uint8)


def _unpack_ort(packed: np.ndarray, bits: int) -> np.ndarray:
    if bits == 8:
        return packed
    out = np.empty((*packed.shape[:-1], packed.shape[-1] * 2), np.uint8)
    out[..., 0::2], out[..., 1::2] = packed & 0x0F, packed >> 4
    return out


def _q4_0(raw: np.ndarray) -> Blocks:
    packed = _pack_ort(_nibbles_ggml(raw[..., 2:18]))
    return Blocks("Q4_0", 4, packed, _half(raw, 0), None)


def _q4_1(raw: np.ndarray) -> Blocks:
    d, m = _half(raw, 0), _half(raw, 2)
    packed = _pack_ort(_nibbles_ggml(raw[..., 4:20]))
    return Blocks("Q4_1", 4, packed, d, m + 8 * d)


def _q8_0(raw: np.ndarray) -> Blocks:
    q = raw[..., 2:34].view(np.int8).astype(np.int16) + 128
    return Blocks("Q8_0", 8, q.astype(np.uint8), _half(raw, 0), None)


_READERS = {"Q4_0": _q4_0, "Q4_1": _q4_1, "Q8_0": _q8_0}
EXACT_BLOCKS = frozenset(_READERS)  # the block types MatMulNBits takes as they are
_BLOCK_BYTES = {"Q4_0": 18, "Q4_1": 20, "Q8_0": 34}


def _unpermute(blocks: Blocks, heads: int) -> Blocks:
    def rows(a: np.ndarray | None) -> np.ndarray | None:
        if a is None:
            return None
        half = a.shape[0] // heads // 2
        return np.ascontiguousarray(
            a.reshape(heads, half, 2, *a.shape[1:]).swapaxes(1, 2).reshape(a.shape)
        )

    packed, scales = rows(blocks.packed), rows(blocks.scales)
    assert packed is not None and scales is not None
    return Blocks(blocks.kind, blocks.bits, packed, scales, rows(blocks.offsets))
