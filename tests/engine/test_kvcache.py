"""The int8 KV cache (`models.graph.kvcache`, the int4-kv8 graph): its graph, the
engine over it, and what the embedded model's preparation does with it."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from tiger_grpc.config import Device
from tiger_grpc.engine.fused import FusedCausalLM
from tiger_grpc.models import embedded, quality
from tiger_grpc.models.graph import kvcache
from tiger_grpc.models.graph.llama import SOURCE_BLOCKS
from tiger_grpc.models.loaded import load_tokenizer
from tiger_grpc.models.pipeline import build_graph
from tiger_grpc.models.store import HF_DIR, ModelManifest, ModelStore

TOKENS = 160  # teacher-forced positions compared


@pytest.fixture(scope="module")
def graphs(
    store_home: Path, tiny_model: ModelManifest, tmp_path_factory
) -> tuple[Path, dict[str, Path], dict[str, str]]:
    """The tiny model's int4 graph and its int4-kv8 twin: its HF directory, the
    graphs, and what `build_graph` said of each."""
    hf = ModelStore(store_home).path(tiny_model.id) / HF_DIR
    out = tmp_path_factory.mktemp("kv8")
    paths, how = {}, {}
    for precision in ("int4", "int4-kv8"):
        how[precision] = build_graph(hf, out / precision, precision)
        paths[precision] = out / precision / "model.onnx"
    return hf, paths, how


def test_the_int4_kv8_graph_holds_an_int8_cache_with_calibrated_scales(
    graphs: tuple[Path, dict[str, Path], dict[str, str]],
) -> None:
    _, paths, how = graphs
    assert how["int4-kv8"] == kvcache.with_int8_cache(how["int4"])
    assert how["int4-kv8"].endswith("; int8 KV cache")
    model = onnx.load(str(paths["int4-kv8"]), load_external_data=False)
    cache = [
        v
        for v in [*model.graph.input, *model.graph.output]
        if v.name.startswith(("past_key_values.", "present."))
    ]
    assert len(cache) == 8  # 2 layers, key and value, past and present
    assert {v.type.tensor_type.elem_type for v in cache} == {TensorProto.INT8}
    scales = {
        t.name: onnx.numpy_helper.to_array(t)
        for t in model.graph.initializer
        if t.name.endswith("_scale")  # held in the graph, not the weights' file
    }
    attention = [n for n in model.graph.node if n.op_type == "GroupQueryAttention"]
    for node in attention:
        attributes = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        assert attributes["kv_cache_bit_width"] == 8
        assert attributes["k_quant_type"] == b"PER_CHANNEL"
        assert attributes["v_quant_type"] == b"PER_CHANNEL"
        for name in node.input[12:14]:
            # one per KV head and head dimension (2 x 16), each > 0 and finite
            assert scales[name].shape == (32,)
            assert np.all(scales[name] > 0) and np.all(np.isfinite(scales[name]))
    # The float twin is untouched by the rewrite.
    float_graph = onnx.load(str(paths["int4"]), load_external_data=False)
    assert float_graph.graph.input[3].type.tensor_type.elem_type == TensorProto.FLOAT


def test_calibration_runs_the_text_as_it_is_and_as_chat_turns(
    graphs: tuple[Path, dict[str, Path], dict[str, str]],
) -> None:
    hf, _, _ = graphs
    tokenizer = load_tokenizer(str(hf))
    sequences = kvcache.calibration_sequences(hf, 100_000)
    assert sequences[0] == tokenizer.encode(kvcache.CALIBRATION.read_text())
    assert len(sequences[0]) > 2000
    chats = sequences[1:]
    assert chats, "the model's chat template gives conversations too"
    start = tokenizer.encode("<|im_start|>", add_special_tokens=False)
    assert all(chat[: len(start)] == start for chat in chats)
    assert all(len(s) <= 300 for s in kvcache.calibration_sequences(hf, 300))


def test_an_int8_cache_decodes_close_to_the_float_one_and_copies_its_rows(
    graphs: tuple[Path, dict[str, Path], dict[str, str]],
) -> None:
    hf, paths, _ = graphs
    ids = quality.held_out_ids(load_tokenizer(str(hf)), TOKENS)
    exact = FusedCausalLM(paths["int4"], Device.CPU, 2, 1024)
    small = FusedCausalLM(paths["int4-kv8"], Device.CPU, 2, 1024)
    assert exact.dtype is np.float32 and small.dtype is np.int8
    assert small.cache_bytes() * 4 == exact.cache_bytes()
    measured = quality.compare(
        quality.fused_logits(exact, ids), quality.fused_logits(small, ids), ids
    )
    # Measured 100% and 1e-6; scales a tenth of the calibrated ones (values
    # clipped) give 99.4% and 0.0017.
    assert measured.top1 >= 0.98 and measured.kl < 1e-4, measured
    # A row copied to another slot (a shared prefix) decodes the same there.
    small.prefill(0, ids[:40])
    small.move(0, 1, 40)
    both = small.decode([ids[40], ids[40]], [40, 40])
    np.testing.assert_array_equal(both[0], both[1])


def test_a_store_from_before_rebuilds_int4_kv8_once() -> None:
    manifest = ModelManifest(
        id="m",
        source="s",
        context_length=8,
        eos_token_ids=[2],
        fused_graphs={"int4": "fused-int4/model.onnx"},
        quantization={"int4": SOURCE_BLOCKS},
    )
    assert not embedded._missing(manifest, "int4")
    assert embedded._missing(manifest, "int4-kv8")
    graphs = {**manifest.fused_graphs, "int4-kv8": "fused-int4-kv8/model.onnx"}
    for recorded, rebuilt in (
        (SOURCE_BLOCKS, True),  # built without the cache's calibration
        (kvcache.with_int8_cache("ORT blockwise int4"), True),  # not the blocks
        (kvcache.with_int8_cache(SOURCE_BLOCKS), False),
    ):
        quantization = {**manifest.quantization, "int4-kv8": recorded}
        later = dataclasses.replace(
            manifest, fused_graphs=graphs, quantization=quantization
        )
        assert embedded._missing(later, "int4-kv8") is rebuilt


def test_a_keys_scale_covers_it_at_any_position() -> None:
    """Keys are rotated by position: a channel's bound is its rotary pair's norm
    (channel d pairs with d + head_dim / 2), which any rotation keeps."""
    rng = np.random.default_rng(0)
    keys = rng.normal(size=(2, 5, 8)).astype(np.float32)  # heads, positions, dim
    bound = kvcache.rotary_norms(keys).max(axis=1)
    assert np.all(bound >= np.abs(keys).max(axis=1))
    for angle in np.linspace(0, 2 * np.pi, 13):
        first, second = keys[..., :4], keys[..., 4:]
        cos, sin = np.cos(angle), np.sin(angle)
        turned = np.concatenate(
            [first * cos - second * sin, first * sin + second * cos], -1
        )
        assert np.all(np.abs(turned).max(axis=1) <= bound + 1e-5)
    # A pair rotated a quarter turn swaps its channels' values: the bound is
    # their norm for both, which the unrotated per-channel maximum is not.
    pair = np.zeros((1, 1, 2), np.float32)
    pair[..., 0] = 3.0
    pair[..., 1] = 4.0
    np.testing.assert_allclose(kvcache.rotary_norms(pair), [[[5.0, 5.0]]])
