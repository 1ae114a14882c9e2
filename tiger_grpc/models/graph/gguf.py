"""A GGUF file's quantized blocks, as `MatMulNBits` takes them: no second rounding.

llama.cpp's Q4_0, Q4_1 and Q8_0 are blocks of 32 weights along the input, each with
an fp16 scale `d`:

- Q4_0: w = d * (q - 8), q in 0..15: `MatMulNBits`'s 4-bit symmetric form as it is.
- Q4_1: w = d * q + m, with a minimum `m`. Written as d * (q - 8) + (m + 8d), that is
  the 4-bit symmetric product plus, per block, `m + 8d` times the sum of the block's
  inputs: `x W = MatMulNBits(x; q, d) + S(x) C`, where S sums x over each block of
  32 and C holds the blocks' offsets (32 times fewer rows than W).
- Q8_0: w = d * q, q int8: the 8-bit symmetric form, q shifted by 128.
- Q5_0 and Q5_1: as Q4_0 and Q4_1 with 5-bit q (q - 16 about zero), held as 8-bit
  blocks: every 5-bit value is an 8-bit one.
- The K-quants, in super-blocks of 256 with a scale (and a minimum) per sub-block:
  Q4_K, w = (d sc) q - (dmin m) over sub-blocks of 32, is Q4_1's form with scale
  d sc and minimum -dmin m; Q5_K is the same with 5-bit q (8-bit blocks); Q6_K,
  w = (d sc) (q - 32) over sub-blocks of 16, is the 8-bit symmetric form in blocks
  of 16; Q3_K, w = (d sc) q with q in -4..3 over sub-blocks of 16, the 4-bit
  symmetric form in blocks of 16; Q2_K, w = (d sc) q - (dmin m) with q in 0..3
  over sub-blocks of 16, Q4_1's form in 4-bit blocks of 16. The products d sc and
  dmin m are exact in float32 (an fp16 times a 4- to 8-bit integer), so the
  weights are the file's to float32 rounding.

Only the element order differs: ggml keeps elements j and j + 16 in byte j (in
the K-quants, each run of 32 bytes, 64 in Q6_K, holds two runs of elements, low
and high nibbles), ORT
elements 2j and 2j + 1. llama.cpp's converter also permutes the rows of the query
and key projections (its rotary layout); they are put back as transformers does.
Other block types (the IQ types, whose values come from codebooks, and the
ternary TQ types) are not read here: their weights take ORT's quantizer.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

BLOCK = 32
ZERO = {4: 8, 8: 128}  # MatMulNBits's implicit zero point at each width
SOURCE_BITS = 4  # the graphs that take a file's blocks: int4's (and int4-fp16's)
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
    """One weight (N outputs, K inputs) in `MatMulNBits`'s layout, in blocks of
    `block` inputs: `packed` (N, K/block, block * bits / 8) uint8, `scales` (N,
    K/block) float32, and for the types with a minimum the blocks' offsets (N,
    K/block) float32: what each block adds to the symmetric form (`m + 8d` for
    Q4_1), times the sum of its inputs."""

    kind: str
    bits: int
    packed: np.ndarray
    scales: np.ndarray
    offsets: np.ndarray | None
    block: int = BLOCK

    @property
    def form(self) -> tuple[int, int]:
        """What one `MatMulNBits` node needs its weights to share."""
        return self.bits, self.block

    def dequantize(self) -> np.ndarray:
        """The (N, K) float32 weights these blocks stand for."""
        q = _unpack_ort(self.packed, self.bits).astype(np.float32)
        w = (q - ZERO[self.bits]) * self.scales[..., None]
        if self.offsets is not None:
            w += self.offsets[..., None]
        return w.reshape(w.shape[0], -1)


def join(parts: list[Blocks]) -> Blocks:
    """Weights of one form (`Blocks.form`) as one, packed along the outputs, with
    offsets of zero for those without."""
    if len(parts) == 1:
        return parts[0]
    offsets = None
    if any(b.offsets is not None for b in parts):
        offsets = np.concatenate(
            [
                b.offsets if b.offsets is not None else np.zeros_like(b.scales)
                for b in parts
            ]
        )
    return Blocks(
        "+".join(b.kind for b in parts),
        parts[0].bits,
        np.concatenate([b.packed for b in parts]),
        np.concatenate([b.scales for b in parts]),
        offsets,
        parts[0].block,
    )


class GgufBlocks:
    """The blocks of a Llama GGUF file's projections and head, by HF parameter
    name, for the types read here (`EXACT_BLOCKS`)."""

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
        from gguf.constants import GGML_QUANT_SIZES  # (elements, bytes) a block

        _, block_bytes = GGML_QUANT_SIZES[tensor.tensor_type]
        blocks = _READERS[kind](raw.reshape(rows, -1, block_bytes))
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
    q = raw[..., 2:34].view(np.int8).astype(np.int16) + ZERO[8]
    return Blocks("Q8_0", 8, q.astype(np.uint8), _half(raw, 0), None)


def _high_bits(qh: np.ndarray, axis: int = -1) -> np.ndarray:
    """Bytes of fifth bits -> one per element, along `axis`, lowest bit first
    (Q5_0/Q5_1: bit j of the little-endian word is element j's)."""
    return np.unpackbits(qh, axis=axis, bitorder="little")


def _q5_0(raw: np.ndarray) -> Blocks:
    q = _nibbles_ggml(raw[..., 6:22]) | (_high_bits(raw[..., 2:6]) << 4)
    return Blocks("Q5_0", 8, q + np.uint8(ZERO[8] - 16), _half(raw, 0), None)


def _q5_1(raw: np.ndarray) -> Blocks:
    d, m = _half(raw, 0), _half(raw, 2)
    q = _nibbles_ggml(raw[..., 8:24]) | (_high_bits(raw[..., 4:8]) << 4)
    return Blocks("Q5_1", 8, q + np.uint8(ZERO[8] - 16), d, m + 16 * d)


def _k_scales(packed: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The 12 bytes of a Q4_K/Q5_K super-block -> its 8 sub-blocks' 6-bit scales
    and minimums: bytes 0-3 hold scales 0-3 (and the top bits of scales 4-7), bytes
    4-7 minimums 0-3 (and the top bits of minimums 4-7), bytes 8-11 the low bits of
    scales 4-7 (low nibble) and minimums 4-7 (high nibble)."""
    first, second, low = packed[..., 0:4], packed[..., 4:8], packed[..., 8:12]
    scales = np.concatenate([first & 0x3F, (low & 0x0F) | ((first >> 2) & 0x30)], -1)
    minima = np.concatenate([second & 0x3F, (low >> 4) | ((second >> 2) & 0x30)], -1)
    return scales.astype(np.float32), minima.astype(np.float32)


def _runs(qs: np.ndarray, width: int) -> np.ndarray:
    """K-quant nibbles: each run of `width` bytes holds two runs of elements, the
    low nibbles first -> (..., runs * 2, width) values."""
    runs = qs.reshape(*qs.shape[:-1], -1, 1, width)
    return np.concatenate([runs & 0x0F, runs >> 4], axis=-2).reshape(
        *qs.shape[:-1], -1, width
    )


def _k_form(kind: str, bits: int, q: np.ndarray, raw: np.ndarray, zero: int) -> Blocks:
    """Q4_K/Q5_K sub-blocks of 32: w = (d sc) q - dmin m, as scale d sc and the
    offset zero * d sc - dmin m over the symmetric form about `zero`."""
    d, dmin = _half(raw, 0)[..., None], _half(raw, 2)[..., None]
    sc, m = _k_scales(raw[..., 4:16])
    scales, minima = d * sc, dmin * m  # (rows, supers, 8)
    return _subblocks(kind, bits, q, scales, zero * scales - minima, BLOCK)


def _subblocks(
    kind: str,
    bits: int,
    q: np.ndarray,
    scales: np.ndarray,
    offsets: np.ndarray | None,
    block: int,
) -> Blocks:
    """`MatMulNBits` blocks of `block` from a K-quant's values (rows first, in
    order) and its sub-blocks' scales (and offsets)."""
    rows = q.shape[0]
    values = q.reshape(rows, -1, block)
    packed = values if bits == 8 else _pack_ort(values)
    offsets = None if offsets is None else offsets.reshape(rows, -1)
    return Blocks(kind, bits, packed, scales.reshape(rows, -1), offsets, block)


def _q4_k(raw: np.ndarray) -> Blocks:
    return _k_form("Q4_K", 4, _runs(raw[..., 16:144], 32), raw, 8)


def _q5_k(raw: np.ndarray) -> Blocks:
    low = _runs(raw[..., 48:176], 32)  # (rows, supers, 8, 32)
    qh = raw[..., 16:48]  # bit i of byte j: element j of sub-block i's fifth bit
    q = low | (_high_bits(qh[..., None, :], axis=-2) << 4)
    return _k_form("Q5_K", 8, q + np.uint8(ZERO[8] - 16), raw, 16)


def _crumbs(qs: np.ndarray, width: int = 32) -> np.ndarray:
    """K-quant 2-bit values: each run of `width` bytes holds four runs of elements,
    the lowest two bits first -> four values a byte, in order."""
    shifts = np.array([0, 2, 4, 6], np.uint8)[:, None]
    runs = qs.reshape(*qs.shape[:-1], -1, 1, width) >> shifts
    return (runs & 3).reshape(*qs.shape[:-1], -1)


def _q2_k(raw: np.ndarray) -> Blocks:
    """Q2_K: 16 sub-blocks of 16, w = (d sc) q - dmin m, q 2-bit, sc and m 4-bit
    (one byte a sub-block): Q4_1's form in 4-bit blocks of 16, q held as q + 6
    (6..9, about the zero point 8) with the offset 2 d sc - dmin m: fp16 rounds
    both halves of the sum, so they are kept small. Measured on a file's Q2_K down
    projections at fp16: the weights' rms error 5.6e-5 this way, 1.0e-4 with q + 8
    (offset -dmin m), more with q as it is."""
    d, dmin = _half(raw, 80)[..., None], _half(raw, 82)[..., None]
    packed = raw[..., 0:16]
    scales = d * (packed & 0x0F).astype(np.float32)
    minima = dmin * (packed >> 4).astype(np.float32)
    q = _crumbs(raw[..., 16:80]) + np.uint8(6)
    return _subblocks("Q2_K", 4, q, scales, (ZERO[4] - 6) * scales - minima, 16)


def _q3_k(raw: np.ndarray) -> Blocks:
    """Q3_K: 16 sub-blocks of 16, w = (d (sc - 32)) q, q in -4..3: two low bits,
    and a high bit in `hmask` (bit b of byte j: element 32 b + j) that, set,
    means q as the low bits say and, clear, 4 less; sc 6-bit, its low nibbles in
    bytes 96-103, its top two bits in 104-107: the 4-bit symmetric form in blocks
    of 16, q + 8 in 4..11."""
    high = _high_bits(raw[..., None, 0:32], axis=-2).reshape(*raw.shape[:-1], -1)
    q = _crumbs(raw[..., 32:96]) + (high << 2) + np.uint8(ZERO[4] - 4)
    low, top = _nibbles_ggml(raw[..., 96:104]), _crumbs(raw[..., 104:108], 4)
    sc = (low | (top << 4)).astype(np.float32) - 32
    return _subblocks("Q3_K", 4, q, _half(raw, 108)[..., None] * sc, None, 16)


def _q6_k(raw: np.ndarray) -> Blocks:
    """Q6_K: 16 sub-blocks of 16, w = (d sc) (q - 32), q 6-bit: low nibbles in
    two runs of 64 bytes, the top two bits four to a byte in two runs of 32."""
    low = _runs(raw[..., 0:128], 64).reshape(*raw.shape[:-1], -1)
    high = _crumbs(raw[..., 128:192])
    q = (low | (high << 4)) + np.uint8(ZERO[8] - 32)
    sc = raw[..., 192:208].view(np.int8).astype(np.float32)
    d = _half(raw, 208)[..., None]
    return _subblocks("Q6_K", 8, q, d * sc, None, 16)


_READERS = {
    "Q4_0": _q4_0,
    "Q4_1": _q4_1,
    "Q8_0": _q8_0,
    "Q5_0": _q5_0,
    "Q5_1": _q5_1,
    "Q4_K": _q4_k,
    "Q5_K": _q5_k,
    "Q6_K": _q6_k,
    "Q2_K": _q2_k,
    "Q3_K": _q3_k,
}
EXACT_BLOCKS = frozenset(_READERS)  # the block types MatMulNBits takes as they are


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
    return replace(blocks, packed=packed, scales=scales, offsets=rows(blocks.offsets))
