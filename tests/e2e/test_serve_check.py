"""`gpu-check --serve`'s server check, as it runs without a GPU: the real server
and gateway on the CPU provider serving a model's fp16 graph, driven over HTTP,
importing the embedded GGUF beside it, and compared with a second server on CPU
(the same greedy answers)."""

from __future__ import annotations

import json

import pytest

from tests.helpers import TINY_MODEL_ID
from tiger_grpc.tools.serve_check import main, served_graph, wrong_graph
from tiger_grpc.tools.serve_report import agreement

pytestmark = pytest.mark.e2e


def test_the_server_check_drives_both_servers_and_compares(
    store_home, tiny_model, tmp_path
) -> None:
    out = tmp_path / "out"
    args = ["--device", "cpu", "--home", str(store_home), "--model", TINY_MODEL_ID]
    report = main([*args, "--against", "cpu", "--import-gguf", "--out", str(out)])
    assert report["failed"] == []
    assert report["model"]["provider"] == "CPUExecutionProvider"
    assert report["graph"] == tiny_model.fused_graphs["fp16"]  # from the server's log
    assert report["dropped"]["dropped"] and len(report["eight_streams"]["texts"]) == 8
    assert report["running_after"] == 0  # the dropped stream's slot came back
    first, second, third = report["chat"]
    assert (
        first["prompt_tokens"] - 8 <= second["cached_tokens"] < second["prompt_tokens"]
    )
    assert second["prompt_tokens"] - 8 <= third["cached_tokens"]
    assert set(json.loads(report["json_schema"]["text"])) == {"city", "country"}
    assert report["against_cpu"] == {"answers": 14, "identical": 14, "parted": []}
    imported = report["import"]  # served beside the tiny model, then removed
    assert imported["provider"] == "CPUExecutionProvider" and imported["answer"]
    assert "210 Q4_1, 1 Q8_0" in imported["said"][0] and imported["seconds"] > 0
    assert not list((store_home / "models").glob("*serve-check-import-*"))
    assert (out / "serve.md").read_text().startswith("# serve-check")
    assert (out / "serve-server-cpu.log").is_file()


def test_the_comparison_says_where_answers_part() -> None:
    same = agreement(["Paris.", "abc"], ["Paris.", "abd"])
    assert same == {
        "answers": 2,
        "identical": 1,
        "parted": [{"answer": 1, "same_chars": 2, "of": 3}],
    }
    assert agreement(["ab"], ["abc"])["parted"] == [
        {"answer": 0, "same_chars": 2, "of": 3}
    ]


def test_a_server_that_served_another_graph_fails_the_check(
    store_home, tiny_model, tmp_path
) -> None:
    """The graph is read from the server's own log line, the model's id in any
    case; serving another graph than the precision's, or lacking it, fails."""
    fp16, fp32 = tiny_model.fused_graphs["fp16"], tiny_model.fused_graphs["fp32"]
    log = tmp_path / "server.log"
    line = "INFO tiger_grpc.models.registry: model {} ({}) ready on CPU in 0.4s\n"
    log.write_text(line.format(tiny_model.id, fp16))
    assert served_graph(tmp_path, tiny_model.id.upper()) == fp16
    assert wrong_graph(store_home, tiny_model.id, "fp16", tmp_path) == []
    log.write_text(line.format(tiny_model.id, fp32))
    assert wrong_graph(store_home, tiny_model.id, "fp16", tmp_path) == [
        f"served {fp32}, not fp16's {fp16}"
    ]
    (missing,) = wrong_graph(store_home, tiny_model.id, "int4-fp16", tmp_path)
    assert missing.startswith(f"served {fp32}: {tiny_model.id} has no int4-fp16 graph")
