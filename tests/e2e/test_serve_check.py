"""`gpu-check --serve`'s server check, as it runs without a GPU: the real server
and gateway on the CPU provider serving a model's fp16 graph, driven over HTTP,
importing the embedded GGUF beside it, and compared with a second server on CPU
(the same greedy answers)."""

from __future__ import annotations

import json

import pytest

from tests.helpers import TINY_MODEL_ID
from tiger_grpc.tools.serve_check import main, wrong_graph
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
    assert report["graph"] == "fp16, none"  # the server's /v1/models says so
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
    store_home, tiny_model
) -> None:
    """The graph is the one the server's `/v1/models` entry names; serving another
    precision's, or lacking the one asked for, fails."""
    fp16 = {"id": tiny_model.id, "precision": "fp16", "quantization": "none"}
    assert wrong_graph(store_home, tiny_model.id, "fp16", fp16) == []
    fp32 = {**fp16, "precision": "fp32"}
    assert wrong_graph(store_home, tiny_model.id, "fp16", fp32) == [
        "served fp32 (none), not fp16"
    ]
    (missing,) = wrong_graph(store_home, tiny_model.id, "int4-fp16", fp32)
    assert missing.startswith(f"served fp32 (none): {tiny_model.id} has no int4-fp16")
