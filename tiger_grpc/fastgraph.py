"""The fast graph: a fused Llama decoder for ONNX Runtime, int8, int4, fp16 or fp32.

Built from the same HF weights as the optimum export, with ONNX Runtime's fused
contrib ops: `GroupQueryAttention` (rotary embedding inside, and a KV cache that is
updated in place in a fixed-size buffer, so no step copies the cache), packed QKV
and gate/up projections, `SkipSimplifiedLayerNormalization`, and logits for the last
position only. For the CPU graphs the projections and the LM head are `MatMulNBits`
with int8 or int4 blocks, quantized by ORT's own kernels (what its `MatMulNBits`
quantizer does); fp16 is the CUDA graph, where weights, activations and the KV cache
are fp16. This is the graph shape of onnxruntime-genai's builder.

Inputs: `input_ids` (batch, seq) int64, `seqlens_k` (batch,) int32 (tokens in the
cache after this step, minus one), `total_sequence_length` () int32 (the largest of
those plus one), `past_key_values.<i>.{key,value}` (batch, kv_heads, max_len,
head_dim) in the graph's float type. Outputs: `logits` (batch, vocab) float32 for
each row's last position, and `present.<i>.{key,value}`, which the caller binds to
the same buffers as the past.

Weights are read, quantized and written to the external data file one tensor at a
time as the graph is built, so an 8B checkpoint never sits in memory (measured: the
8B shape in fp16, 16 GB of weights, builds in 2.5 min with 3.5 GB resident).
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from .imports import IMPORT_LOCK

log = logging.getLogger(__name__)

MS = "com.microsoft"
FORMAT = "tiger-gqa-v1"  # what the manifest records for graphs made here
BLOCK_SIZE = 32
# accuracy_level 4: int8 activations in MatMulNBits, the fast path on CPU.
ACCURACY_LEVEL = 4
# Weight precision -> (quantized bits or None, float type of activations and cache).
# int4 is the CPU default and the fastest there; int8 stays closer to fp32 (on the
# embedded model, top-1 agreement with fp32 of ~93% against ~73% for int4; see
# tests/test_quality.py) at ~3/4 the speed. fp16 is the CUDA graph.
PRECISIONS: dict[str, tuple[int | None, type]] = {
    "int8": (8, np.float32),
    "int4": (4, np.float32),
    "fp16": (None, np.float16),
    "fp32": (None, np.float32),
}
_ONNX_FLOAT = {np.float32: TensorProto.FLOAT, np.float16: TensorProto.FLOAT16}
_INLINE_BYTES = 1024  # smaller initializers stay inside the graph file

Tensors = Callable[[str], np.ndarray]  # HF parameter name -> its array


@dataclass(frozen=True)
class LlamaShape:
    """What the graph needs to know of a Llama config."""

    hidden: int
    intermediate: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int
    eps: float
    max_len: int
    tied: bool

    @classmethod
    def of(cls, config: Any) -> LlamaShape:
        if config.model_type != "llama":
            raise ValueError(
                f"the fused graph supports Llama models, not {config.model_type}"
            )
        if getattr(config, "attention_bias", False) or getattr(
            config, "mlp_bias", False
        ):
            raise ValueError("the fused graph supports Llama models without biases")
        heads = config.num_attention_heads
        return cls(
            hidden=config.hidden_size,
            intermediate=config.intermediate_size,
            layers=config.num_hidden_layers,
            heads=heads,
            kv_heads=config.num_key_value_heads,
            head_dim=getattr(config, "head_dim", None) or config.hidden_size // heads,
            vocab=config.vocab_size,
            eps=float(config.rms_norm_eps),
            max_len=int(config.max_position_embeddings),
            tied=bool(getattr(config, "tie_word_embeddings", False)),
        )


def _rope_tables(config: Any, max_len: int) -> tuple[np.ndarray, np.ndarray]:
    with IMPORT_LOCK:
        import torch
        from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    rope_type = "default"
    if getattr(config, "rope_scaling", None):
        rope_type = config.rope_scaling.get(
            "rope_type", config.rope_scaling.get("type", "default")
        )
    inv_freq, scaling = ROPE_INIT_FUNCTIONS[rope_type](config, torch.device("cpu"))
    positions = torch.arange(max_len, dtype=torch.float32)
    freqs = torch.outer(positions, inv_freq.float())
    return (
        (torch.cos(freqs) * scaling).numpy().astype(np.float32),
        (torch.sin(freqs) * scaling).numpy().astype(np.float32),
    )


class _Graph:
    """A small helper over onnx.helper that names things and streams initializers
    into the external data file as they come."""

    def __init__(self, data: BinaryIO, location: str) -> None:
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self._count = 0
        self._data = data
        self._location = location

    def weight(self, name: str, array: np.ndarray) -> str:
        array = np.ascontiguousarray(array)
        if array.nbytes < _INLINE_BYTES:
            self.initializers.append(numpy_helper.from_array(array, name))
            return name
        tensor = TensorProto(
            name=name,
            dims=array.shape,
            data_type=helper.np_dtype_to_tensor_dtype(array.dtype),
        )
        offset = self._data.seek(0, 2)
        padding = -offset % 4096  # page-aligned, so ORT can map the weights
        self._data.write(b"\0" * padding)
        self._data.write(memoryview(array).cast("B"))
        for key, value in (
            ("location", self._location),
            ("offset", str(offset + padding)),
            ("length", str(array.nbytes)),
        ):
            tensor.external_data.add(key=key, value=value)
        tensor.data_location = TensorProto.EXTERNAL
        self.initializers.append(tensor)
        return name

    def op(
        self,
        op_type: str,
        inputs: list[str],
        n_out: int = 1,
        domain: str = "",
        name: str | None = None,
        **attrs: Any,
    ) -> list[str]:
        self._count += 1
        node_name = name or f"{op_type}_{self._count}"
        outputs = [f"{node_name}/out{i}" for i in range(n_out)]
        self.nodes.append(
            helper.make_node(
                op_type, inputs, outputs, name=node_name, domain=domain or None, **attrs
            )
        )
        return outputs


def checkpoint_tensors(hf_dir: Path) -> Tensors:
    """Reads a checkpoint's tensors one at a time (safetensors), or through
    transformers for other formats."""
    files = sorted(hf_dir.glob("*.safetensors"))
    if not files:
        with IMPORT_LOCK:
            import torch
            from transformers import AutoModelForCausalLM

        model = AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32)
        state = model.state_dict()
        return lambda name: state[name].detach().float().numpy()

    with IMPORT_LOCK:
        import torch
        from safetensors import safe_open

    where: dict[str, Path] = {}
    index = hf_dir / "model.safetensors.index.json"
    if index.is_file():
        for name, file in json.loads(index.read_text())["weight_map"].items():
            where[name] = hf_dir / file
    else:
        for file in files:
            with safe_open(file, framework="pt") as handle:
                where.update(dict.fromkeys(handle.keys(), file))

    def read(name: str) -> np.ndarray:
        with safe_open(where[name], framework="pt") as handle:
            return handle.get_tensor(name).to(torch.float32).numpy()

    return read


def random_tensors(shape: LlamaShape, seed: int = 0) -> Tensors:
    """Weights of the right shapes with random values (for timing: speed does not
    depend on the values). Every tensor is a window on one random pool."""
    pool = np.random.default_rng(seed).standard_normal(1 << 24, np.float32) * 0.02
    h, kv = shape.hidden, shape.kv_heads * shape.head_dim
    q = shape.heads * shape.head_dim

    def shape_of(name: str) -> tuple[int, ...]:
        if name in ("model.embed_tokens.weight", "lm_head.weight"):
            return (shape.vocab, h)
        part = name.rsplit(".", 2)[-2]
        return {
            "input_layernorm": (h,),
            "post_attention_layernorm": (h,),
            "norm": (h,),
            "q_proj": (q, h),
            "k_proj": (kv, h),
            "v_proj": (kv, h),
            "o_proj": (h, q),
            "gate_proj": (shape.intermediate, h),
            "up_proj": (shape.intermediate, h),
            "down_proj": (h, shape.intermediate),
        }[part]

    def read(name: str) -> np.ndarray:
        dims = shape_of(name)
        if len(dims) == 1:
            return np.ones(dims, np.float32)
        size = int(np.prod(dims))
        reps = -(-size // pool.size)
        flat = np.tile(pool, reps)[:size] if reps > 1 else pool[:size]
        return flat.reshape(dims)

    return read


def build_fused_llama(
    hf_dir: Path, out_path: Path, dtype: type = np.float32, **options: Any
) -> dict[str, Any]:
    """Writes the fused graph of the Llama checkpoint in `hf_dir` (`options`: those
    of `build_fused_graph`); returns its facts."""
    with IMPORT_LOCK:
        from transformers import AutoConfig

    config = AutoConfig.from_pretrained(hf_dir)
    LlamaShape.of(config)  # unsupported models fail before anything is read
    return build_fused_graph(
        config, checkpoint_tensors(hf_dir), out_path, dtype, **options
    )


def build_fused_graph(
    config: Any,
    tensors: Tensors,
    out_path: Path,
    dtype: type = np.float32,
    max_len: int | None = None,
    progress: Callable[[int, int], None] | None = None,
    bits: int | None = None,
) -> dict[str, Any]:
    """Writes the fused graph of a Llama `config` with weights from `tensors`;
    `progress(layers_done, layers)` is called after each layer. With `bits` (8 or
    4), every projection and the LM head are quantized as they are written."""
    s = LlamaShape.of(config)
    max_len = max_len or s.max_len
    float_type = _ONNX_FLOAT[dtype]
    cos, sin = _rope_tables(config, max_len)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    location = out_path.name + ".data"
    with open(out_path.parent / location, "wb") as data:
        g = _Graph(data, location)

        def param(name: str) -> np.ndarray:
            return tensors(name).astype(dtype, copy=False)

        cos_name = g.weight("cos_cache", cos.astype(dtype))
        sin_name = g.weight("sin_cache", sin.astype(dtype))
        embed = g.weight("embed_tokens", param("model.embed_tokens.weight"))
        (x,) = g.op("Gather", [embed, "input_ids"], name="embed")
        residual: str | None = None
        pending = x  # output of the previous block, not yet added to the residual
        inputs, outputs = [], []

        def norm(value: str, weight_key: str, name: str) -> str:
            nonlocal residual
            weight = g.weight(weight_key, param(weight_key))
            if residual is None:
                (out,) = g.op(
                    "SimplifiedLayerNormalization",
                    [value, weight],
                    name=name,
                    axis=-1,
                    epsilon=s.eps,
                    stash_type=1,
                )
                residual = value
                return out
            out, _, _, summed = g.op(
                "SkipSimplifiedLayerNormalization",
                [value, residual, weight],
                n_out=4,
                domain=MS,
                name=name,
                epsilon=s.eps,
            )
            residual = summed
            return out

        def linear(value: str, keys: list[str], name: str) -> str:
            parts = [param(k) for k in keys]
            weight = (parts[0] if len(parts) == 1 else np.concatenate(parts)).T
            if bits is None:
                (out,) = g.op(
                    "MatMul", [value, g.weight(f"{name}.weight", weight)], name=name
                )
                return out
            packed, scales = quantize_blocks(weight, bits)
            k, n = weight.shape
            (out,) = g.op(
                "MatMulNBits",
                [
                    value,
                    g.weight(f"{name}.weight_Q{bits}", packed),
                    g.weight(f"{name}.weight_scales", scales),
                ],
                domain=MS,
                name=name,
                K=k,
                N=n,
                bits=bits,
                block_size=BLOCK_SIZE,
                accuracy_level=ACCURACY_LEVEL,
            )
            return out

        for i in range(s.layers):
            p = f"model.layers.{i}"
            h = norm(pending, f"{p}.input_layernorm.weight", f"layers.{i}.input_norm")
            qkv = linear(
                h,
                [f"{p}.self_attn.{n}_proj.weight" for n in "qkv"],
                f"layers.{i}.qkv_proj",
            )
            past_k, past_v = f"past_key_values.{i}.key", f"past_key_values.{i}.value"
            present_k, present_v = f"present.{i}.key", f"present.{i}.value"
            g.nodes.append(
                helper.make_node(
                    "GroupQueryAttention",
                    [
                        qkv,
                        "",
                        "",
                        past_k,
                        past_v,
                        "seqlens_k",
                        "total_sequence_length",
                        cos_name,
                        sin_name,
                    ],
                    [f"layers.{i}.attn/out", present_k, present_v],
                    name=f"layers.{i}.attn",
                    domain=MS,
                    num_heads=s.heads,
                    kv_num_heads=s.kv_heads,
                    scale=1.0 / math.sqrt(s.head_dim),
                    do_rotary=1,
                    rotary_interleaved=0,
                )
            )
            o = linear(
                f"layers.{i}.attn/out",
                [f"{p}.self_attn.o_proj.weight"],
                f"layers.{i}.o_proj",
            )
            h = norm(o, f"{p}.post_attention_layernorm.weight", f"layers.{i}.post_norm")
            gate_up = linear(
                h,
                [f"{p}.mlp.gate_proj.weight", f"{p}.mlp.up_proj.weight"],
                f"layers.{i}.gate_up_proj",
            )
            gate, up = g.op(
                "Split",
                [gate_up],
                n_out=2,
                axis=-1,
                num_outputs=2,
                name=f"layers.{i}.split",
            )
            (sig,) = g.op("Sigmoid", [gate], name=f"layers.{i}.sigmoid")
            (silu,) = g.op("Mul", [gate, sig], name=f"layers.{i}.silu")
            (act,) = g.op("Mul", [silu, up], name=f"layers.{i}.act")
            pending = linear(
                act, [f"{p}.mlp.down_proj.weight"], f"layers.{i}.down_proj"
            )
            if progress is not None:
                progress(i + 1, s.layers)
            shape = ["batch", s.kv_heads, "max_length", s.head_dim]
            inputs += [
                helper.make_tensor_value_info(n, float_type, shape)
                for n in (past_k, past_v)
            ]
            outputs += [
                helper.make_tensor_value_info(n, float_type, shape)
                for n in (present_k, present_v)
            ]

        final = norm(pending, "model.norm.weight", "final_norm")
        # Only the last position's logits are ever used: slice before the LM head.
        starts, ends = (
            g.weight("last_start", np.array([-1], np.int64)),
            g.weight("last_end", np.array([2**62], np.int64)),
        )
        axes = g.weight("seq_axis", np.array([1], np.int64))
        (last,) = g.op("Slice", [final, starts, ends, axes], name="last_position")
        (squeezed,) = g.op("Squeeze", [last, axes], name="squeeze_last")
        lm_key = "model.embed_tokens.weight" if s.tied else "lm_head.weight"
        logits = linear(squeezed, [lm_key], "lm_head")
        if dtype is np.float32:
            g.nodes.append(
                helper.make_node("Identity", [logits], ["logits"], name="logits")
            )
        else:  # sampling wants float32 logits
            g.nodes.append(
                helper.make_node(
                    "Cast", [logits], ["logits"], name="logits", to=TensorProto.FLOAT
                )
            )

    graph = helper.make_graph(
        g.nodes,
        "tiger-llama",
        [
            helper.make_tensor_value_info(
                "input_ids", TensorProto.INT64, ["batch", "sequence"]
            ),
            helper.make_tensor_value_info("seqlens_k", TensorProto.INT32, ["batch"]),
            helper.make_tensor_value_info(
                "total_sequence_length", TensorProto.INT32, []
            ),
            *inputs,
        ],
        [
            helper.make_tensor_value_info(
                "logits", TensorProto.FLOAT, ["batch", s.vocab]
            ),
            *outputs,
        ],
        g.initializers,
    )
    model_proto = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", 21), helper.make_opsetid(MS, 1)],
        producer_name="tiger",
    )
    model_proto.ir_version = 10
    onnx.save_model(model_proto, str(out_path))
    return {
        "max_length": max_len,
        "kv_heads": s.kv_heads,
        "head_dim": s.head_dim,
        "layers": s.layers,
    }


def quantize_blocks(weight: np.ndarray, bits: int) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric blockwise quantization of a (K, N) weight along K, blocks of 32,
    with ORT's own kernels (what its `MatMulNBits` quantizer does): the packed
    blocks (N, K/32, 32*bits/8) uint8 and the scales (N, K/32)."""
    from onnxruntime.capi._pybind_state import (
        quantize_matmul_4bits,
        quantize_matmul_8bits,
    )

    weight = np.ascontiguousarray(weight, dtype=np.float32)
    rows, cols = weight.shape
    blocks = -(-rows // BLOCK_SIZE)
    if blocks * BLOCK_SIZE != rows:
        weight = np.pad(weight, ((0, blocks * BLOCK_SIZE - rows), (0, 0)))
    packed = np.zeros((cols, blocks, BLOCK_SIZE * bits // 8), np.uint8)
    zero_points = np.zeros((cols, -(-blocks * bits // 8)), np.uint8)  # unused
    scales = np.zeros((cols, blocks), np.float32)
    kernel = {4: quantize_matmul_4bits, 8: quantize_matmul_8bits}[bits]
    kernel(packed, weight, scales, zero_points, BLOCK_SIZE, cols, rows, True)
    return packed, scales
