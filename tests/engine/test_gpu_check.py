"""`make gpu-check`'s dry run, as CI makes it: the same steps on the CPU provider
(the provider in use recorded, the scripted engine calls compared, the attention
nodes found in ORT's profile, the report written)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tiger_grpc.tools.gpu_check import attention_nodes, attention_times, compare, main


def test_the_dry_run_writes_its_report(tmp_path) -> None:
    out = tmp_path / "out"
    main(["--device", "cpu", "--no-8b", "--out", str(out), "--workdir", str(tmp_path)])
    report = json.loads((out / "check.json").read_text())
    assert report["provider"] == "CPUExecutionProvider"
    assert report["cuda_graphs"] is True  # decode took CUDA graphs' path
    assert report["two_models_at_once"] == {
        "max_relative_difference": 0.0,
        "within_tolerance": True,
    }
    for key in ("logits_against_cpu", "logits_against_cpu_without_graphs"):
        logits = report[key]
        assert logits["calls"] == 40 and logits["within_tolerance"]
        assert logits["max_relative_difference"] == 0.0  # the CPU against itself
    assert len(report["attention"]) == 4
    assert report["attention_times"]["calls"] == 40
    assert report["cuda_attention"] == "flash"
    assert {a["provider"] for a in report["attention"]} == {"CPUExecutionProvider"}
    assert "within fp16 tolerance (0.05): yes" in (out / "check.md").read_text()
    others = report["other_precisions"]  # the other graphs CUDA serves, checked too
    assert sorted(others) == ["int4-fp16", "int8-fp16"]
    assert all(c["calls"] == 40 and c["within_tolerance"] for c in others.values())
    said = (out / "check.md").read_text()
    assert "the same calls through the int8-fp16 graph: max relative" in said


def test_the_dry_run_checks_the_int4_graph_cuda_serves(tmp_path) -> None:
    """`--precision int4` checks what int4 is on CUDA: int4 weights with fp16
    activations and cache, every MatMulNBits among the calls compared."""
    import onnx

    out = tmp_path / "out"
    argv = ["--device", "cpu", "--no-8b", "--precision", "int4"]
    main([*argv, "--out", str(out), "--workdir", str(tmp_path)])
    report = json.loads((out / "check.json").read_text())
    assert report["precision"] == "int4-fp16"
    assert sorted(report["other_precisions"]) == ["fp16", "int8-fp16"]
    assert report["logits_against_cpu"]["within_tolerance"]
    graph = onnx.load(
        tmp_path / "tiny-random-int4-fp16" / "model.onnx", load_external_data=False
    )
    ops = {node.op_type for node in graph.graph.node}
    assert "MatMulNBits" in ops and "MatMul" not in ops
    assert graph.graph.input[3].type.tensor_type.elem_type == onnx.TensorProto.FLOAT16
    with pytest.raises(SystemExit):
        main(["--device", "cpu", "--precision", "fp32", "--out", str(out)])


def test_attention_times_show_a_kernel_that_prepares_each_new_shape(tmp_path) -> None:
    """As an H100's profile showed cuDNN's SDPA: the first attention node of a call
    with a new shape far slower than the rest (its plan built, then shared)."""
    events = [{"cat": "Session", "name": "model_run", "dur": 5}]
    for first in (780.0, 0.1, 45.0, 0.1, 0.12, 0.1):
        for layer in range(4):
            events.append(
                {
                    "name": f"layers.{layer}.attn_kernel_time",
                    "dur": (first if layer == 0 else 0.1) * 1000,
                    "args": {"op_name": "GroupQueryAttention"},
                }
            )
    profile = tmp_path / "profile.json"
    profile.write_text(json.dumps(events))
    assert attention_times(attention_nodes(profile)) == {
        "calls": 6,
        "median_ms": 0.11,
        "slowest_ms": 780.0,
        "calls_over_10x_median": 2,
    }


def test_the_comparison_catches_a_wrong_step() -> None:
    rng = np.random.default_rng(0)
    cpu = [rng.normal(0, 3, (4, 50)).astype(np.float32) for _ in range(3)]
    device = [c.copy() for c in cpu]
    assert compare(device, cpu)["within_tolerance"]
    device[1][2, 7] += 5.0  # one logit of one step, far off
    wrong = compare(device, cpu)
    assert not wrong["within_tolerance"] and wrong["max_relative_difference"] > 0.05


def test_graph_decode_keeps_each_steps_logits_and_follows_the_cache(tmp_path) -> None:
    """Decode through CUDA graphs' path (run here without capture): each step's
    logits are its own (the fixed output buffer is read out, not handed out), a
    moved slot and a new batch size give the plain path's logits, and a new cache
    gets new graph ids (graphs hold the old one's addresses)."""
    from tiger_grpc.config import Device
    from tiger_grpc.engine.fused import FusedCausalLM
    from tiger_grpc.tools.bench_gpu import random_graph

    path = random_graph("tiny", "fp16", tmp_path)
    plain = FusedCausalLM(path, Device.CPU, max_batch=4, max_len=256, graphs=False)
    graphs = FusedCausalLM(path, Device.CPU, max_batch=4, max_len=256, graphs=True)
    outputs = []
    for model in (plain, graphs):
        model.prefill(0, list(range(3, 60)))
        model.prefill(1, list(range(7, 20)))
        first = model.decode([11, 12], [57, 13])
        second = model.decode([13, 14], [58, 14])
        model.move(1, 2, 15)  # the scheduler's move: slot 1 into slot 2
        model.prefill(1, list(range(9, 30)))
        third = model.decode([15, 16, 17], [59, 21, 15])
        outputs.append((first, second, third))
    for a, b in zip(*outputs, strict=True):
        np.testing.assert_array_equal(a, b)
    assert not np.array_equal(outputs[1][0], outputs[1][1])
    ids = {
        n: s.options.get_run_config_entry("gpu_graph_id")
        for n, s in graphs._decoder.steps.items()
    }
    assert sorted(ids) == [2, 3] and len(set(ids.values())) == 2
    graphs.reset()
    graphs.prefill(0, [5, 6, 7])
    graphs.decode([8, 9], [3, 0])
    renewed = graphs._decoder.steps[2].options.get_run_config_entry("gpu_graph_id")
    assert renewed not in ids.values()


def test_graph_decode_after_the_cache_grows(tmp_path) -> None:
    """A cache that grows (on CPU it starts short) takes new graph steps bound to
    the new buffers: decoding past the first capacity through the graph path gives
    the plain path's logits."""
    from tiger_grpc.config import Device
    from tiger_grpc.engine.fused import INITIAL_CAPACITY, FusedCausalLM
    from tiger_grpc.tools.bench_gpu import random_graph

    path = random_graph("tiny", "fp16", tmp_path)
    outputs = []
    for graphs in (False, True):
        model = FusedCausalLM(
            path, Device.CPU, max_batch=2, max_len=2048, graphs=graphs
        )
        prompt = list(range(3, INITIAL_CAPACITY - 2))
        model.prefill(0, prompt)
        steps = [model.decode([7], [len(prompt)])]  # a graph step on the first cache
        for i in range(1, 6):  # past the first capacity: the cache grows
            steps.append(model.decode([7 + i], [len(prompt) + i]))
        assert model.capacity > INITIAL_CAPACITY
        outputs.append(steps)
    for plain, graph in zip(*outputs, strict=True):
        np.testing.assert_array_equal(plain, graph)
