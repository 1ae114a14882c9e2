"""A GGUF file's quantized blocks as the int4 graph takes them (`models.graph.gguf`):
every block type read gives back gguf's own dequantization exactly, and a graph
whose weights mix the types (widths 4 and 8, blocks of 32 and 16, with and without
minimums) computes what the float graph of the same weights does."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from transformers import LlamaConfig

from tiger_grpc.config import Device
from tiger_grpc.engine.fused import FusedCausalLM
from tiger_grpc.models.graph import build_fused_graph
from tiger_grpc.models.graph import gguf as blocks_of
from tiger_grpc.models.graph.llama import SOURCE_BLOCKS

TYPES = ["Q4_0", "Q4_1", "Q8_0", "Q5_0", "Q5_1", "Q4_K", "Q5_K", "Q6_K", "Q2_K", "Q3_K"]
# Where each type keeps its fp16 scale (and minimum), in bytes from a block's
# start, with the range of values that gives weights of about 0.1 at most.
HALVES = {
    "Q4_0": {0: (0.006, 0.012)},
    "Q4_1": {0: (0.003, 0.007), 2: (-0.05, -0.02)},
    "Q8_0": {0: (4e-4, 8e-4)},
    "Q5_0": {0: (0.003, 0.006)},
    "Q5_1": {0: (0.0015, 0.003), 2: (-0.05, -0.02)},
    "Q4_K": {0: (5e-5, 1e-4), 2: (5e-4, 1e-3)},
    "Q5_K": {0: (2.5e-5, 5e-5), 2: (5e-4, 1e-3)},
    "Q6_K": {208: (1.2e-5, 2.5e-5)},
    "Q2_K": {80: (1e-3, 2e-3), 82: (5e-4, 1e-3)},
    "Q3_K": {108: (2e-4, 4e-4)},
}


def raw_blocks(kind: str, rows: int, inputs: int, seed: int) -> np.ndarray:
    """Random blocks of `kind` for a (rows, inputs) weight, as a file holds them:
    random bits, with finite fp16 scales of a realistic size."""
    from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType

    per, block_bytes = GGML_QUANT_SIZES[GGMLQuantizationType[kind]]
    rng = np.random.default_rng(seed)
    shape = (rows, inputs // per, block_bytes)
    raw = rng.integers(0, 256, shape, dtype=np.uint8)
    for at, (low, high) in HALVES[kind].items():
        half = rng.uniform(low, high, shape[:-1]).astype(np.float16)
        raw[..., at : at + 2] = half[..., None].view(np.uint8)
    return raw


def test_a_files_query_and_key_blocks_are_put_back_in_rotary_order(tmp_path) -> None:
    """Through `GgufBlocks` from a file gguf's own writer wrote: K-quant query
    and key rows (offsets, blocks of 16) come back in transformers' order."""
    from gguf import GGMLQuantizationType, GGUFWriter
    from gguf.quants import dequantize
    from transformers.modeling_gguf_pytorch_utils import LlamaTensorProcessor

    heads, kv_heads, width = 4, 2, 256
    layout = {"attn_q": ("Q4_K", width), "attn_k": ("Q6_K", 128)}
    layout |= {"attn_v": ("Q5_K", 128), "ffn_down": ("Q5_1", width)}
    writer = GGUFWriter(str(tmp_path / "blocks.gguf"), "llama")
    raws = {}
    for i, (short, (kind, rows)) in enumerate(layout.items()):
        raws[short] = raw_blocks(kind, rows, width, seed=50 + i)
        writer.add_tensor(
            f"blk.0.{short}.weight",
            raws[short].reshape(rows, -1),
            raw_dtype=GGMLQuantizationType[kind],
        )
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()

    read = blocks_of.GgufBlocks(tmp_path / "blocks.gguf", heads, kv_heads)
    hf = LlamaTensorProcessor(
        {"num_attention_heads": heads, "num_key_value_heads": kv_heads}
    )
    parts = {"attn_q": "self_attn.q", "attn_k": "self_attn.k"}
    parts |= {"attn_v": "self_attn.v", "ffn_down": "mlp.down"}
    for short, (kind, rows) in layout.items():
        flat = dequantize(raws[short].reshape(rows, -1), GGMLQuantizationType[kind])
        expected = hf.process(flat, f"blk.0.{short}.weight").weights
        got = read(f"model.layers.0.{parts[short]}_proj.weight")
        assert got is not None and got.kind == kind
        assert np.array_equal(got.dequantize(), expected), short


@pytest.mark.parametrize("kind", TYPES)
def test_each_block_type_reads_as_gguf_dequantizes_it(kind: str) -> None:
    from gguf import GGMLQuantizationType
    from gguf.quants import dequantize

    raw = raw_blocks(kind, 6, 512, seed=TYPES.index(kind))
    blocks = blocks_of._READERS[kind](raw)
    expected = dequantize(raw.reshape(6, -1), GGMLQuantizationType[kind])
    assert blocks.kind == kind
    assert np.array_equal(blocks.dequantize(), expected.reshape(6, 512))
    assert blocks.packed.shape[:2] == blocks.scales.shape
    assert blocks.packed.shape[2] * 8 == blocks.block * blocks.bits
    assert blocks.kind in blocks_of.EXACT_BLOCKS


HIDDEN, FFN, VOCAB = 256, 512, 300
# Each weight's type: qkv and gate/up mix widths and block lengths, so that they
# take a node per form (in the last layer, one form of 4-bit blocks of 16, with
# and without minimums); the tied head is Q6_K (8-bit blocks of 16).
LAYOUT = [
    {"q": "Q4_K", "k": "Q4_0", "v": "Q6_K", "o": "Q5_K", "gate": "Q4_1",
     "up": "Q5_0", "down": "Q8_0"},
    {"q": "Q6_K", "k": "Q6_K", "v": "Q5_1", "o": "Q4_0", "gate": "Q5_K",
     "up": "Q5_K", "down": "Q4_K"},
    {"q": "Q3_K", "k": "Q2_K", "v": "Q3_K", "o": "Q2_K", "gate": "Q2_K",
     "up": "Q3_K", "down": "Q3_K"},
]  # fmt: skip


def key_of(layer: int, part: str) -> str:
    where = "mlp" if part in ("gate", "up", "down") else "self_attn"
    return f"model.layers.{layer}.{where}.{part}_proj.weight"


def node_weights(graph: onnx.ModelProto, name: str) -> np.ndarray:
    """The (N, K) weights that projection `name`'s `MatMulNBits` nodes hold (one,
    or several under a `Concat`), with their offsets."""
    from onnx.numpy_helper import to_array

    weights = {w.name: to_array(w) for w in graph.graph.initializer}
    nodes = {node.name: node for node in graph.graph.node}
    node = nodes[name]
    if node.op_type == "Concat":
        parts = (f"{name}.{i}" for i in range(len(node.input)))
        return np.concatenate([node_weights(graph, part) for part in parts])
    attrs = {a.name: a.i for a in node.attribute}
    offsets = weights.get(f"{name}.block_offsets")
    blocks = blocks_of.Blocks(
        "graph",
        attrs["bits"],
        weights[node.input[1]],
        weights[node.input[2]],
        None if offsets is None else offsets.T,
        attrs["block_size"],
    )
    return blocks.dequantize()


@pytest.mark.parametrize("dtype", [np.float32, np.float16], ids=["fp32", "fp16"])
def test_a_graph_of_mixed_block_types_computes_its_weights(tmp_path, dtype) -> None:
    """At float32 activations (int4 on CPU) and at fp16 (int4 on CUDA: the scales
    and offsets are fp16 too, so the weights are theirs to fp16's rounding)."""
    config = LlamaConfig(
        hidden_size=HIDDEN,
        intermediate_size=FFN,
        num_hidden_layers=len(LAYOUT),
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=VOCAB,
        tie_word_embeddings=True,
        max_position_embeddings=256,
    )
    shapes = {"q": (HIDDEN, HIDDEN), "k": (128, HIDDEN), "v": (128, HIDDEN)}
    shapes |= {"o": (HIDDEN, HIDDEN), "gate": (FFN, HIDDEN), "up": (FFN, HIDDEN)}
    shapes["down"] = (HIDDEN, FFN)
    found: dict[str, blocks_of.Blocks] = {}
    for i, layer in enumerate(LAYOUT):
        for part, kind in layer.items():
            raw = raw_blocks(kind, *shapes[part], seed=100 * i + len(found))
            found[key_of(i, part)] = blocks_of._READERS[kind](raw)
    found["model.embed_tokens.weight"] = blocks_of._READERS["Q6_K"](
        raw_blocks("Q6_K", VOCAB, HIDDEN, seed=7)
    )
    rng = np.random.default_rng(0)
    norms: dict[str, np.ndarray] = {}  # the same for both graphs

    def tensors(name: str) -> np.ndarray:
        if name in found:
            return found[name].dequantize()
        assert name.endswith("norm.weight"), name
        if name not in norms:
            norms[name] = (1 + 0.1 * rng.standard_normal(HIDDEN)).astype(np.float32)
        return norms[name]

    exact = build_fused_graph(
        config, tensors, tmp_path / "int4" / "model.onnx", dtype, 256, bits=4,
        blocks=found.get,
    )  # fmt: skip
    float32 = build_fused_graph(
        config, tensors, tmp_path / "fp32" / "model.onnx", np.float32, 256
    )
    assert exact["quantization"] == SOURCE_BLOCKS
    assert float32["quantization"] == "none"

    graph = onnx.load(tmp_path / "int4" / "model.onnx", load_external_data=False)
    nodes = {node.name: node for node in graph.graph.node}
    assert nodes["layers.0.qkv_proj"].op_type == "Concat"  # 4-bit/32, 8-bit/16
    assert nodes["layers.1.qkv_proj"].op_type == "Concat"  # 8-bit/16, 8-bit/32
    assert nodes["layers.1.gate_up_proj"].op_type == "MatMulNBits"  # one form
    # 4-bit/16, with offsets (Q2_K) and without (Q3_K): one form, one node
    assert nodes["layers.2.qkv_proj"].op_type == "MatMulNBits"
    assert nodes["layers.2.gate_up_proj"].op_type == "MatMulNBits"
    widths = {
        (attr.name, attr.i)
        for node in graph.graph.node
        if node.op_type == "MatMulNBits"
        for attr in node.attribute
        if attr.name in ("bits", "block_size")
    }
    assert widths == {("bits", 4), ("bits", 8), ("block_size", 32), ("block_size", 16)}

    # Every projection's nodes hold exactly the file's weights, to the rounding of
    # the activations' type: fp16 rounds scales by 2^-11 of themselves, and offsets
    # (up to ~0.06 here) by up to 3e-5.
    held = onnx.load(tmp_path / "int4" / "model.onnx")
    fp16 = {"rtol": 2**-11, "atol": 4e-5}
    tolerance = fp16 if dtype is np.float16 else {"atol": 1e-7}
    projections = {"qkv": "qkv", "o": "o", "gate_up": ["gate", "up"], "down": ["down"]}
    for i in range(len(LAYOUT)):
        for name, parts in projections.items():
            keys = [p for p in ("q", "k", "v", "o", "gate", "up", "down") if p in parts]
            weights = np.concatenate([found[key_of(i, p)].dequantize() for p in keys])
            np.testing.assert_allclose(
                node_weights(held, f"layers.{i}.{name}_proj"), weights, **tolerance
            )
    np.testing.assert_allclose(
        node_weights(held, "lm_head"),
        found["model.embed_tokens.weight"].dequantize(),
        **tolerance,
    )

    prompt = [5, 17, 42, 99, 250, 3, 8, 120]
    got, want = (
        FusedCausalLM(tmp_path / p / "model.onnx", Device.CPU, 1, 64)
        for p in ("int4", "fp32")
    )
    for model in (got, want):
        model.prefill(0, prompt[:-1])
    logits = [model.decode([prompt[-1]], [len(prompt) - 1])[0] for model in (got, want)]
    # Only the activations are rounded (int8 blocks, as llama.cpp does), which
    # moves these random weights' logits by a few hundredths of their spread
    # (measured 0.02-0.06 by type); a weight read wrongly moves them by more than
    # the spread (measured 1.6 with one layer's norms mismatched).
    error = np.abs(logits[0] - logits[1]).max() / logits[1].std()
    print(f"logits' error over their spread: {error:.3f}")
    assert error < 0.15, error
    # The float graph's top token is among the quantized one's first three (the
    # two top logits here lie 0.004 apart, within the activations' rounding).
    assert np.argmax(logits[1]) in np.argsort(logits[0])[-3:]
