"""The fast CPU graph: a fused Llama decoder for ONNX Runtime, int8, int4 or fp32.

Built from the same HF weights as the optimum export, with ONNX Runtime's fused
contrib ops: `GroupQueryAttention` (rotary embedding inside, and a KV cache that is
updated in place in a fixed-size buffer, so no step copies the cache), packed QKV
and gate/up projections, `SkipSimplifiedLayerNormalization`, and logits for the last
position only. ORT's own `MatMulNBits` quantizer then turns the projections and the
LM head into int4 blocks. This is the graph shape of onnxruntime-genai's builder.

Inputs: `input_ids` (batch, seq) int64, `seqlens_k` (batch,) int32 (tokens in the
cache after this step, minus one), `total_sequence_length` () int32 (the largest of
those plus one), `past_key_values.<i>.{key,value}` (batch, kv_heads, max_len,
head_dim). Outputs: `logits` (batch, vocab) for each row's last position, and
`present.<i>.{key,value}`, which the caller binds to the same buffers as the past.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

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
# Weight precision -> quantized bits (None: fp32). int4 is the default and the
# fastest; int8 stays closer to fp32 (on the embedded model, top-1 agreement with
# fp32 of ~93% against ~73% for int4; see tests/test_quality.py) at ~3/4 the speed.
PRECISION_BITS: dict[str, int | None] = {"int8": 8, "int4": 4, "fp32": None}


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
    """A small helper over onnx.helper that names things and keeps initializers."""

    def __init__(self) -> None:
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self._count = 0

    def weight(self, name: str, array: np.ndarray) -> str:
        self.initializers.append(
            numpy_helper.from_array(np.ascontiguousarray(array), name)
        )
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


def build_fused_llama(
    hf_dir: Path, out_path: Path, max_len: int | None = None
) -> dict[str, Any]:
    """Writes the fp32 fused graph for the Llama checkpoint in `hf_dir`; returns its facts."""
    with IMPORT_LOCK:
        import torch
        from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(hf_dir)
    if config.model_type != "llama":
        raise ValueError(
            f"the fused graph supports Llama models, not {config.model_type}"
        )
    model = AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32)
    state = {k: v.detach().numpy() for k, v in model.state_dict().items()}
    hidden, heads = config.hidden_size, config.num_attention_heads
    kv_heads = config.num_key_value_heads
    head_dim = getattr(config, "head_dim", None) or hidden // heads
    eps = float(config.rms_norm_eps)
    max_len = max_len or int(config.max_position_embeddings)
    cos, sin = _rope_tables(config, max_len)

    g = _Graph()
    cos_name, sin_name = g.weight("cos_cache", cos), g.weight("sin_cache", sin)
    embed = g.weight("embed_tokens", state["model.embed_tokens.weight"])
    (x,) = g.op("Gather", [embed, "input_ids"], name="embed")
    residual: str | None = None
    pending = x  # output of the previous block, not yet added to the residual
    inputs, outputs = [], []

    def norm(value: str, weight_key: str, name: str) -> str:
        nonlocal residual
        weight = g.weight(weight_key, state[weight_key])
        if residual is None:
            (out,) = g.op(
                "SimplifiedLayerNormalization",
                [value, weight],
                name=name,
                axis=-1,
                epsilon=eps,
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
            epsilon=eps,
        )
        residual = summed
        return out

    def linear(value: str, keys: list[str], name: str) -> str:
        weight = np.concatenate([state[k] for k in keys], axis=0).T  # (in, out)
        (out,) = g.op("MatMul", [value, g.weight(f"{name}.weight", weight)], name=name)
        return out

    for i in range(config.num_hidden_layers):
        p = f"model.layers.{i}"
        h = norm(pending, f"{p}.input_layernorm.weight", f"layers.{i}.input_norm")
        qkv = linear(
            h, [f"{p}.self_attn.{n}_proj.weight" for n in "qkv"], f"layers.{i}.qkv_proj"
        )
        past_k, past_v = f"past_key_values.{i}.key", f"past_key_values.{i}.value"
        present_k, present_v = f"present.{i}.key", f"present.{i}.value"
        attn_node = helper.make_node(
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
            num_heads=heads,
            kv_num_heads=kv_heads,
            scale=1.0 / math.sqrt(head_dim),
            do_rotary=1,
            rotary_interleaved=0,
        )
        g.nodes.append(attn_node)
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
        pending = linear(act, [f"{p}.mlp.down_proj.weight"], f"layers.{i}.down_proj")
        shape = ["batch", kv_heads, "max_length", head_dim]
        inputs += [
            helper.make_tensor_value_info(n, TensorProto.FLOAT, shape)
            for n in (past_k, past_v)
        ]
        outputs += [
            helper.make_tensor_value_info(n, TensorProto.FLOAT, shape)
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
    lm_weight = state.get("lm_head.weight", state["model.embed_tokens.weight"])
    (logits,) = g.op(
        "MatMul", [squeezed, g.weight("lm_head.weight", lm_weight.T)], name="lm_head"
    )
    g.nodes.append(helper.make_node("Identity", [logits], ["logits"], name="logits"))

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
                "logits", TensorProto.FLOAT, ["batch", config.vocab_size]
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
    _save(model_proto, out_path)
    return {
        "max_length": max_len,
        "kv_heads": kv_heads,
        "head_dim": head_dim,
        "layers": config.num_hidden_layers,
    }


def quantize(fp32_path: Path, out_path: Path, bits: int) -> None:
    """Blockwise int8 or int4 for every MatMul weight (LM head included), with ORT's
    own `MatMulNBits` quantizer (symmetric blocks of 32)."""
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    quantizer = MatMulNBitsQuantizer(
        onnx.load(str(fp32_path)),
        bits=bits,
        block_size=BLOCK_SIZE,
        is_symmetric=True,
        accuracy_level=ACCURACY_LEVEL,
        op_types_to_quantize=("MatMul",),
    )
    quantizer.process()
    _save(quantizer.model.model, out_path)


def _save(model_proto: onnx.ModelProto, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    (path.parent / (path.name + ".data")).unlink(missing_ok=True)  # onnx appends
    # Weights live in one external file next to the graph (protobuf caps a single
    # file at 2 GB, and an 8B model is far past that).
    onnx.save_model(
        model_proto,
        str(path),
        save_as_external_data=True,
        all_tensors_to_one_file=True,
        location=path.name + ".data",
        size_threshold=1024,
    )
