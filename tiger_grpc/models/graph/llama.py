"""The fused Llama decoder, written layer by layer.

Inputs: `input_ids` (batch, seq) int64, `seqlens_k` (batch,) int32 (tokens in the
cache after this step, minus one), `total_sequence_length` () int32 (the largest of
those plus one), `past_key_values.<i>.{key,value}` (batch, kv_heads, max_len,
head_dim) in the graph's float type. Outputs: `logits` (batch, vocab) float32 for
each row's last position, and `present.<i>.{key,value}`, which the caller binds to
the same buffers as the past.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper

from ...runtime.ml import IMPORT_LOCK
from .accuracy import ACCURACY_LEVEL, down_accuracy, node_accuracy
from .gguf import SOURCE_BITS, Blocks, GgufBlocks, join
from .shape import LlamaShape, rope_tables
from .tensors import Tensors, checkpoint_tensors
from .writer import GraphWriter, quantize_blocks

MS = "com.microsoft"
_ONNX_FLOAT = {np.float32: TensorProto.FLOAT, np.float16: TensorProto.FLOAT16}
QuantizedTensors = Callable[[str], Blocks | None]  # HF name -> its file's blocks
SOURCE_BLOCKS = "source blocks"  # the manifest's word for a graph of those
# The head's most likely tokens whose logits an int4 graph computes again in full
# precision (see `_Decoder.rescore`).
RESCORED = 16


class _Decoder:
    """Writes the graph's nodes into a `GraphWriter`; `residual` is the running
    sum that each `SkipSimplifiedLayerNormalization` adds the block output into."""

    def __init__(
        self,
        g: GraphWriter,
        s: LlamaShape,
        tensors: Tensors,
        dtype: type,
        bits: int | None,
        blocks: QuantizedTensors | None = None,
    ) -> None:
        self.g, self.s, self.tensors = g, s, tensors
        self.dtype, self.bits, self.blocks = dtype, bits, blocks
        self.residual: str | None = None
        self.exact = self.requantized = 0  # weights written each way
        self._axis = ""

    def param(self, name: str) -> np.ndarray:
        return self.tensors(name).astype(self.dtype, copy=False)

    def norm(self, value: str, weight_key: str, name: str) -> str:
        weight = self.g.weight(weight_key, self.param(weight_key))
        if self.residual is None:
            (out,) = self.g.op(
                "SimplifiedLayerNormalization",
                [value, weight],
                name=name,
                axis=-1,
                epsilon=self.s.eps,
                stash_type=1,
            )
            self.residual = value
            return out
        out, _, _, summed = self.g.op(
            "SkipSimplifiedLayerNormalization",
            [value, self.residual, weight],
            n_out=4,
            domain=MS,
            name=name,
            epsilon=self.s.eps,
        )
        self.residual = summed
        return out

    def linear(
        self,
        value: str,
        keys: list[str],
        name: str,
        rank: int = 3,
        accuracy: int = ACCURACY_LEVEL,
    ) -> str:
        """One projection of the (packed) weights `keys` applied to `value` (of
        `rank` dimensions): `MatMul`, or `MatMulNBits` (`accuracy`: its
        accuracy_level), each weight in the source file's own blocks when it has
        them, else quantized as it is written. Weights whose blocks differ in width
        or length take a node each, concatenated."""
        if self.bits is None:
            parts = [self.param(k) for k in keys]
            weight = (parts[0] if len(parts) == 1 else np.concatenate(parts)).T
            (out,) = self.g.op(
                "MatMul", [value, self.g.weight(f"{name}.weight", weight)], name=name
            )
            return out
        found = [self._blocks(key) for key in keys]
        k = found[0][1]  # the packed weights share their input
        assert all(inputs == k for _, inputs in found), (name, keys)
        runs = itertools.groupby((blocks for blocks, _ in found), lambda b: b.form)
        groups = [list(run) for _, run in runs]
        if len(groups) == 1:
            return self._exact(value, join(groups[0]), name, rank, k, accuracy)
        outs = [
            self._exact(value, join(group), f"{name}.{i}", rank, k, accuracy)
            for i, group in enumerate(groups)
        ]
        (out,) = self.g.op("Concat", outs, name=name, axis=-1)
        return out

    def _blocks(self, key: str) -> tuple[Blocks, int]:
        """Weight `key` as blocks, and its inputs: the source file's own when an
        int4 graph is written and the file has them in a type `MatMulNBits` takes
        as it is, else ORT's quantization of it (padded to whole blocks)."""
        found = None
        if self.bits == SOURCE_BITS and self.blocks is not None:
            found = self.blocks(key)
        if found is not None:
            self.exact += 1
            return found, found.scales.shape[1] * found.block
        assert self.bits is not None
        self.requantized += 1
        weight = self.tensors(key).T  # quantized from float32, whatever the graph's
        packed, scales = quantize_blocks(weight, self.bits)
        ort = Blocks(f"ORT int{self.bits}", self.bits, packed, scales, None)
        return ort, weight.shape[0]

    def _exact(
        self,
        value: str,
        blocks: Blocks,
        name: str,
        rank: int,
        k: int,
        accuracy: int = ACCURACY_LEVEL,
    ) -> str:
        """`MatMulNBits` over the blocks as they are (`k` inputs: all the blocks'
        unless the last is padded); with offsets (Q4_1's and the like), plus the
        sums of each block of inputs times the offsets (see `gguf`)."""
        n, k_blocks = blocks.scales.shape
        scales: np.ndarray = blocks.scales.astype(self.dtype)  # the activations' type
        (out,) = self.g.op(
            "MatMulNBits",
            [
                value,
                self.g.weight(f"{name}.weight_Q{blocks.bits}", blocks.packed),
                self.g.weight(f"{name}.weight_scales", scales),
            ],
            domain=MS,
            name=name,
            K=k,
            N=n,
            bits=blocks.bits,
            block_size=blocks.block,
            accuracy_level=node_accuracy(blocks.bits, accuracy),
        )
        if blocks.offsets is None:
            return out
        shape = np.array([0] * (rank - 1) + [k_blocks, blocks.block], np.int64)
        grouping = self.g.weight(f"{name}.blocks", shape)
        (grouped,) = self.g.op("Reshape", [value, grouping], name=f"{name}.blocks")
        axis = self._last_axis()
        (sums,) = self.g.op(
            "ReduceSum", [grouped, axis], name=f"{name}.block_sums", keepdims=0
        )
        offsets: np.ndarray = blocks.offsets.T.astype(self.dtype)  # (K/block, N)
        (shift,) = self.g.op(
            "MatMul",
            [sums, self.g.weight(f"{name}.block_offsets", offsets)],
            name=f"{name}.offsets",
        )
        (total,) = self.g.op("Add", [out, shift], name=f"{name}.add_offsets")
        return total

    def _last_axis(self) -> str:
        if not self._axis:
            self._axis = self.g.weight("last_axis", np.array([-1], np.int64))
        return self._axis

    def attention(self, h: str, i: int, rope: tuple[str, str]) -> str:
        p = f"model.layers.{i}.self_attn"
        qkv = self.linear(
            h, [f"{p}.{n}_proj.weight" for n in "qkv"], f"layers.{i}.qkv_proj"
        )
        self.g.nodes.append(
            helper.make_node(
                "GroupQueryAttention",
                [
                    qkv,
                    "",
                    "",
                    f"past_key_values.{i}.key",
                    f"past_key_values.{i}.value",
                    "seqlens_k",
                    "total_sequence_length",
                    *rope,
                ],
                [f"layers.{i}.attn/out", f"present.{i}.key", f"present.{i}.value"],
                name=f"layers.{i}.attn",
                domain=MS,
                num_heads=self.s.heads,
                kv_num_heads=self.s.kv_heads,
                scale=1.0 / math.sqrt(self.s.head_dim),
                do_rotary=1,
                rotary_interleaved=0,
            )
        )
        return self.linear(
            f"layers.{i}.attn/out", [f"{p}.o_proj.weight"], f"layers.{i}.o_proj"
        )

    def mlp(self, h: str, i: int) -> str:
        p = f"model.layers.{i}.mlp"
        gate_up = self.linear(
            h,
            [f"{p}.gate_proj.weight", f"{p}.up_proj.weight"],
            f"layers.{i}.gate_up_proj",
        )
        gate, up = self.g.op(
            "Split",
            [gate_up],
            n_out=2,
            axis=-1,
            num_outputs=2,
            name=f"layers.{i}.split",
        )
        (sig,) = self.g.op("Sigmoid", [gate], name=f"layers.{i}.sigmoid")
        (silu,) = self.g.op("Mul", [gate, sig], name=f"layers.{i}.silu")
        (act,) = self.g.op("Mul", [silu, up], name=f"layers.{i}.act")
        down = [f"{p}.down_proj.weight"]
        accuracy = down_accuracy(i, self.s.layers, self.s.intermediate)
        return self.linear(act, down, f"layers.{i}.down_proj", accuracy=accuracy)

    def layer(self, x: str, i: int, rope: tuple[str, str]) -> str:
        """A decoder layer; returns its output, not yet added to the residual."""
        p = f"model.layers.{i}"
        h = self.norm(x, f"{p}.input_layernorm.weight", f"layers.{i}.input_norm")
        o = self.attention(h, i, rope)
        h = self.norm(
            o, f"{p}.post_attention_layernorm.weight", f"layers.{i}.post_norm"
        )
        return self.mlp(h, i)

    def rescore(self, x: str, logits: str) -> str:
        """The `RESCORED` highest logits computed again from float activations and
        the float embedding (the tied head's weights, which the graph holds for
        its input anyway): int8 activations in the head move a logit by a few
        hundredths, enough to swap near-ties at the top (measured on the embedded
        model: top-1 agreement with fp32 96.7% -> 97.3%, at +0.1 ms a token)."""
        k = self.g.weight("rescored", np.array([RESCORED], np.int64))
        _, top = self.g.op("TopK", [logits, k], n_out=2, name="head.top", axis=-1)
        (rows,) = self.g.op("Gather", ["embed_tokens", top], name="head.rows")
        one = self.g.weight("head.row_axis", np.array([1], np.int64))
        (column,) = self.g.op("Unsqueeze", [x, one], name="head.x")
        (products,) = self.g.op("Mul", [rows, column], name="head.products")
        (exact,) = self.g.op(
            "ReduceSum", [products, self._last_axis()], name="head.exact", keepdims=0
        )
        (out,) = self.g.op(
            "ScatterElements", [logits, top, exact], name="head.rescored", axis=-1
        )
        return out

    def head(self, x: str) -> None:
        """The final norm and the LM head, for the last position only (the only
        logits ever used), as float32 `logits`."""
        final = self.norm(x, "model.norm.weight", "final_norm")
        starts = self.g.weight("last_start", np.array([-1], np.int64))
        ends = self.g.weight("last_end", np.array([2**62], np.int64))
        axes = self.g.weight("seq_axis", np.array([1], np.int64))
        (last,) = self.g.op("Slice", [final, starts, ends, axes], name="last_position")
        (squeezed,) = self.g.op("Squeeze", [last, axes], name="squeeze_last")
        lm_key = "model.embed_tokens.weight" if self.s.tied else "lm_head.weight"
        logits = self.linear(squeezed, [lm_key], "lm_head", rank=2)
        if self.bits == 4 and self.s.tied:
            logits = self.rescore(squeezed, logits)
        if self.dtype is np.float32:
            node = helper.make_node("Identity", [logits], ["logits"], name="logits")
        else:  # sampling wants float32 logits
            node = helper.make_node(
                "Cast", [logits], ["logits"], name="logits", to=TensorProto.FLOAT
            )
        self.g.nodes.append(node)


def _io(s: LlamaShape, dtype: type) -> tuple[list[Any], list[Any]]:
    """The graph's inputs and outputs."""
    float_type = _ONNX_FLOAT[dtype]
    kv = ["batch", s.kv_heads, "max_length", s.head_dim]
    cache = [f"{i}.{kind}" for i in range(s.layers) for kind in ("key", "value")]
    inputs = [
        helper.make_tensor_value_info(
            "input_ids", TensorProto.INT64, ["batch", "sequence"]
        ),
        helper.make_tensor_value_info("seqlens_k", TensorProto.INT32, ["batch"]),
        helper.make_tensor_value_info("total_sequence_length", TensorProto.INT32, []),
        *(
            helper.make_tensor_value_info(f"past_key_values.{c}", float_type, kv)
            for c in cache
        ),
    ]
    outputs = [
        helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", s.vocab]),
        *(helper.make_tensor_value_info(f"present.{c}", float_type, kv) for c in cache),
    ]
    return inputs, outputs


def build_fused_graph(
    config: Any,
    tensors: Tensors,
    out_path: Path,
    dtype: type = np.float32,
    max_len: int | None = None,
    progress: Callable[[int, int], None] | None = None,
    bits: int | None = None,
    blocks: QuantizedTensors | None = None,
) -> dict[str, Any]:
    """Writes the fused graph of a Llama `config` with weights from `tensors`;
    `progress(layers_done, layers)` is called after each layer. With `bits` (8 or
    4), every projection and the LM head are quantized as they are written; at 4,
    those that `blocks` has (a GGUF file's own) are taken as they are. The facts
    returned say which way (`quantization`)."""
    s = LlamaShape.of(config)
    max_len = max_len or s.max_len
    cos, sin = rope_tables(config, max_len)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    location = out_path.name + ".data"
    with open(out_path.parent / location, "wb") as data:
        g = GraphWriter(data, location)
        d = _Decoder(g, s, tensors, dtype, bits, blocks)
        rope = (
            g.weight("cos_cache", cos.astype(dtype)),
            g.weight("sin_cache", sin.astype(dtype)),
        )
        embed = g.weight("embed_tokens", d.param("model.embed_tokens.weight"))
        (x,) = g.op("Gather", [embed, "input_ids"], name="embed")
        for i in range(s.layers):
            x = d.layer(x, i, rope)
            if progress is not None:
                progress(i + 1, s.layers)
        d.head(x)
    inputs, outputs = _io(s, dtype)
    graph = helper.make_graph(g.nodes, "tiger-llama", inputs, outputs, g.initializers)
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", 21), helper.make_opsetid(MS, 1)],
        producer_name="tiger",
    )
    model.ir_version = 10
    onnx.save_model(model, str(out_path))
    return {
        "max_length": max_len,
        "kv_heads": s.kv_heads,
        "head_dim": s.head_dim,
        "layers": s.layers,
        "quantization": _quantization(bits, d.exact, d.requantized),
    }


def _quantization(bits: int | None, exact: int, requantized: int) -> str:
    """How the weights were quantized, for the manifest."""
    if bits is None:
        return "none"
    ort = f"ORT blockwise int{bits}"
    if not exact:
        return ort
    if not requantized:
        return SOURCE_BLOCKS
    return f"{SOURCE_BLOCKS} ({exact} weights), {ort} ({requantized})"


def build_fused_llama(
    hf_dir: Path,
    out_path: Path,
    dtype: type = np.float32,
    gguf: Path | None = None,
    **options: Any,
) -> dict[str, Any]:
    """Writes the fused graph of the Llama checkpoint in `hf_dir` (`options`: those
    of `build_fused_graph`), taking the quantized blocks of `gguf` (the file the
    checkpoint was converted from) where an int4 graph can; returns its facts."""
    with IMPORT_LOCK:
        from transformers import AutoConfig

    config = AutoConfig.from_pretrained(hf_dir)
    s = LlamaShape.of(config)  # unsupported models fail before anything is read
    if gguf is not None and options.get("bits") == SOURCE_BITS:
        options["blocks"] = GgufBlocks(gguf, s.heads, s.kv_heads)
    return build_fused_graph(
        config, checkpoint_tensors(hf_dir), out_path, dtype, **options
    )
