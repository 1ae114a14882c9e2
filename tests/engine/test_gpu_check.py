"""`make gpu-check`'s dry run, as CI makes it: the same steps on the CPU provider
(the provider in use recorded, the scripted engine calls compared, the attention
nodes found in ORT's profile, the report written)."""

from __future__ import annotations

import json

import numpy as np

from tiger_grpc.tools.gpu_check import compare, main


def test_the_dry_run_writes_its_report(tmp_path) -> None:
    out = tmp_path / "out"
    main(["--device", "cpu", "--no-8b", "--out", str(out), "--workdir", str(tmp_path)])
    report = json.loads((out / "check.json").read_text())
    assert report["provider"] == "CPUExecutionProvider"
    logits = report["logits_against_cpu"]
    assert logits["calls"] == 40 and logits["within_tolerance"]
    assert logits["max_relative_difference"] == 0.0  # the CPU against itself
    assert len(report["attention"]) == 4
    assert {a["provider"] for a in report["attention"]} == {"CPUExecutionProvider"}
    assert "within fp16 tolerance (0.05): yes" in (out / "check.md").read_text()


def test_the_comparison_catches_a_wrong_step() -> None:
    rng = np.random.default_rng(0)
    cpu = [rng.normal(0, 3, (4, 50)).astype(np.float32) for _ in range(3)]
    device = [c.copy() for c in cpu]
    assert compare(device, cpu)["within_tolerance"]
    device[1][2, 7] += 5.0  # one logit of one step, far off
    wrong = compare(device, cpu)
    assert not wrong["within_tolerance"] and wrong["max_relative_difference"] > 0.05
