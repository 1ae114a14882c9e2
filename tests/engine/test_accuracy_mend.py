"""A fused graph written under earlier accuracy rules is brought to the current ones
when it is served: the graph file is rewritten (its weights untouched), and it then
computes what a graph built today computes."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import onnx
import pytest
from transformers import LlamaConfig

from tiger_grpc.config import Device, EngineOptions
from tiger_grpc.engine.fused import FusedCausalLM
from tiger_grpc.models import loaded
from tiger_grpc.models.graph import (
    LlamaShape,
    accuracy,
    build_fused_graph,
    random_tensors,
)
from tiger_grpc.models.loaded import LoadedModel
from tiger_grpc.models.store import ModelManifest

LAYERS = 10  # the last tenth: one layer
PROMPT = list(range(5, 25))


def build(directory: Path, bits: int, intermediate: int) -> Path:
    config = LlamaConfig(
        hidden_size=64,
        intermediate_size=intermediate,
        num_hidden_layers=LAYERS,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=300,
        max_position_embeddings=128,
        tie_word_embeddings=True,
    )
    tensors = random_tensors(LlamaShape.of(config), seed=5)
    path = directory / "fused" / "model.onnx"
    build_fused_graph(config, tensors, path, np.float32, 64, bits=bits)
    return path


def levels(path: Path) -> dict[str, int]:
    graph = onnx.load(str(path), load_external_data=False).graph
    return {
        n.name: next(a.i for a in n.attribute if a.name == "accuracy_level")
        for n in graph.node
        if n.op_type == "MatMulNBits"
    }


def write_levels(path: Path, changed: dict[str, int]) -> None:
    """The graph as an earlier version wrote it: `changed` node levels."""
    model = onnx.load(str(path), load_external_data=False)
    for node in model.graph.node:
        for attribute in node.attribute:
            if node.name in changed and attribute.name == "accuracy_level":
                attribute.i = changed[node.name]
    onnx.save_model(model, str(path))


def serve(directory: Path, precision: str) -> LoadedModel:
    manifest = ModelManifest(
        id="mended",
        source="test",
        context_length=64,
        eos_token_ids=[0],
        fused_graphs={precision: "fused/model.onnx"},
    )
    options = EngineOptions(device=Device.CPU, precision=precision, max_batch=1)
    return LoadedModel(manifest, directory, options, "CPUExecutionProvider")


@pytest.mark.parametrize(
    ("bits", "intermediate", "stale"),
    [
        # 8-bit blocks at float activations (the earlier rule's last tenth): slow.
        (8, 256, {"layers.9.down_proj": 1}),
        # 4-bit: a wide down projection on the float path, a narrow one that the
        # current rule gives float activations left at int8, and an attention
        # projection at float activations.
        (4, 2304, {"layers.9.down_proj": 1, "layers.0.qkv_proj": 1}),
        (4, 256, {"layers.9.down_proj": 4}),
    ],
)
def test_a_stale_graph_is_mended_when_it_is_served(
    tmp_path: Path, bits: int, intermediate: int, stale: dict[str, int]
) -> None:
    today = build(tmp_path / "today", bits, intermediate)
    wanted = levels(today)
    assert any(wanted[name] != level for name, level in stale.items())
    earlier = build(tmp_path / "earlier", bits, intermediate)
    write_levels(earlier, stale)
    assert levels(earlier) != wanted

    model = serve(tmp_path / "earlier", f"int{bits}")
    try:
        assert levels(earlier) == wanted
        fresh = FusedCausalLM(today, Device.CPU, 1)
        np.testing.assert_array_equal(
            model.scheduler.model.prefill(0, PROMPT), fresh.prefill(0, PROMPT)
        )
    finally:
        model.close()
    assert accuracy.mend_accuracy(earlier) == 0  # once
    assert not list(earlier.parent.glob("*.mending"))


def test_a_store_that_cannot_be_written_serves_the_graph_as_it_is(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    earlier = build(tmp_path, 8, 256)
    write_levels(earlier, {"layers.9.down_proj": 1})

    def refused(*_: object) -> None:
        raise PermissionError("read-only file system")

    monkeypatch.setattr(accuracy.os, "replace", refused)
    with caplog.at_level(logging.WARNING, logger=loaded.__name__):
        model = serve(tmp_path, "int8")
    try:
        assert levels(earlier)["layers.9.down_proj"] == 1
        assert "served as it was built" in caplog.text
        assert not list(earlier.parent.glob("*.mending"))
        assert len(model.scheduler.model.prefill(0, PROMPT)) == 300
    finally:
        model.close()
