"""`make gpu-check`: one command that proves the CUDA path on a machine with a GPU,
in a few minutes, and writes what it saw to `--out` (check.json, check.md).

1. The provider: a small random-weight Llama's fused graph (fp16; `--precision`
   int4 or int8 for theirs, with fp16 activations as on CUDA) is loaded the way
   the server loads it (`FusedCausalLM`, KV cache on the device, bound by address);
   the provider the session really got is recorded, and a CUDA run that got CPU
   stops here (`DeviceError`).
2. The engine's calls, scripted so any device makes the same ones: a 300-token
   prompt written in chunks of 128, seven more streams joining (8 at once), decode
   steps, a stream leaving (the last slot moved into its place, as a cancel does),
   more steps. Tokens are drawn at random, not sampled, so the calls stay the same
   whatever the logits; every call's logits are compared with the same graph on
   the CPU provider (max |difference|, and top-1 agreement), against fp16's
   tolerance.
   The same calls go through the other graphs CUDA serves (fp16, int4-fp16,
   int8-fp16: small random ones), each compared with the CPU provider too.
3. The attention kernel: ONNX Runtime's profile of the run names the provider of
   each GroupQueryAttention node; the compute capability and ORT's attention
   switches (`ORT_ENABLE_XQA`, ...) are recorded with it.
4. With CUDA in use, `make bench-gpu`'s Llama-3.1-8B shape at 1/8/32 streams, the
   time to first token of a 2,000-token prompt and the share of the bandwidth
   bound, written next to the report (`--no-8b` skips it).
5. With `--serve HOME`, the server end to end on the device (`serve_check`): the
   real server and gateway serving the embedded model of the store HOME at that
   precision,
   driven over HTTP, each greedy answer compared with a server on CPU; with
   `--import-gguf [FILE]`, also a GGUF imported and served beside the model.

Without a GPU, `--device cpu` is the dry run CI makes: the same steps on the CPU
provider against itself. It needs no model preparation (no GGUF, no optimum).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from ..config import Device, cuda_attention
from ..engine.providers import CPU, CUDA, cuda_can_load, cuda_compute_major
from ..models.precision import PRECISIONS, on_cuda, runs_on
from .bench_gpu import random_graph
from .serve_check import add_import_gguf
from .serve_check import main as serve_check

SWITCHES = (
    "ORT_ENABLE_XQA",
    "ORT_ENABLE_CUDNN_FLASH_ATTENTION",
    "ORT_DISABLE_FLASH_ATTENTION",
    "ORT_DISABLE_MEMORY_EFFICIENT_ATTENTION",
)
FP16_TOLERANCE = 0.05  # max |logit difference|, relative to the largest |logit|
PROMPTS = (300, 40, 17, 64, 5, 33, 90, 12)  # 8 streams' prompt lengths
CUDA_GRAPHS = tuple(p for p in PRECISIONS if runs_on(p, CUDA))  # fp16 activations
CHUNK = 128


def scripted_calls(model: Any, seed: int = 0) -> list[np.ndarray]:
    """The same engine calls on any device; every call's logits (as float32)."""
    rng = np.random.default_rng(seed)
    vocab = model.vocab_size
    prompts = [rng.integers(3, vocab, size=n).tolist() for n in PROMPTS]
    out: list[np.ndarray] = []
    first = prompts[0]
    for start in range(0, len(first), CHUNK):  # a long prompt, a chunk at a time
        out.append(model.prefill(0, first[: start + CHUNK], start))
    lengths = [len(first)]

    def steps(count: int) -> None:
        for _ in range(count):
            tokens = rng.integers(3, vocab, size=len(lengths)).tolist()
            out.append(model.decode(tokens, lengths))
            lengths[:] = [n + 1 for n in lengths]

    for slot in range(1, len(prompts)):  # seven more join, one by one
        out.append(model.prefill(slot, prompts[slot]))
        lengths.append(len(prompts[slot]))
        steps(2)
    steps(8)
    # Stream 2 leaves: the last slot moves into its place, as the scheduler does.
    last = len(lengths) - 1
    model.move(last, 2, lengths[last])
    lengths[2] = lengths.pop()
    steps(8)
    return [np.asarray(x, np.float32) for x in out]


def compare(device: list[np.ndarray], cpu: list[np.ndarray]) -> dict[str, Any]:
    worst, agree, total = 0.0, 0, 0
    for a, b in zip(device, cpu, strict=True):
        scale = max(1.0, float(np.abs(b).max()))
        worst = max(worst, float(np.abs(a - b).max()) / scale)
        a2, b2 = a.reshape(-1, a.shape[-1]), b.reshape(-1, b.shape[-1])
        agree += int((a2.argmax(-1) == b2.argmax(-1)).sum())
        total += a2.shape[0]
    return {
        "calls": len(cpu),
        "max_relative_difference": worst,
        "top1_agreement": agree / total,
        "within_tolerance": worst <= FP16_TOLERANCE,
    }


def attention_nodes(profile: Path) -> list[dict[str, Any]]:
    """The GroupQueryAttention kernels an ORT profile timed, in order."""
    events = json.loads(profile.read_text())
    return [
        event
        for event in events
        if (event.get("args") or {}).get("op_name") == "GroupQueryAttention"
        and str(event.get("name", "")).endswith("_kernel_time")
    ]


def attention_kernels(nodes: list[dict[str, Any]]) -> list[dict[str, str]]:
    """The attention nodes and their providers."""
    found = {
        str(n["name"]).removesuffix("_kernel_time"): n["args"].get("provider", "?")
        for n in nodes
    }
    return [{"node": n, "provider": p} for n, p in sorted(found.items())][:4]


def attention_times(nodes: list[dict[str, Any]]) -> dict[str, Any]:
    """Each engine call's slowest attention node: a kernel that prepares itself
    for each new shape (cuDNN's SDPA builds an execution plan the first time it
    meets a prompt length or a batch size) shows as calls far slower than the
    median."""
    runs: list[float] = []
    for node in nodes:
        ms = float(node.get("dur", 0)) / 1000
        if str(node["name"]).startswith("layers.0.") or not runs:
            runs.append(ms)  # a call's first attention node
        else:
            runs[-1] = max(runs[-1], ms)
    if not runs:
        return {"calls": 0}
    median = float(np.median(runs))
    return {
        "calls": len(runs),
        "median_ms": round(median, 3),
        "slowest_ms": round(max(runs), 1),
        "calls_over_10x_median": sum(r > 10 * median for r in runs),
    }


ATTENTION_KERNEL = re.compile(
    r"flash|fmha|xqa|attention|attn|mha|sdpa|gqa|softmax", re.IGNORECASE
)


def cuda_kernels(model: Any) -> dict[str, Any]:
    """The CUDA kernels a prefill and a decode step launch, as CUPTI records them
    (through PyTorch's profiler, which sees every kernel of the process, ORT's
    too): the attention ones by name, and the busiest, with their GPU time."""
    try:
        import torch  # noqa: F401 - the profiler needs it loaded
        from torch.profiler import ProfilerActivity, profile
    except ImportError:
        return {"error": "no PyTorch here to read the CUDA kernels with"}
    found: dict[str, Any] = {}
    prompt = list(range(3, 259))
    try:
        for phase in ("prefill", "decode"):
            model.reset()
            if phase == "decode":
                model.prefill(0, prompt)
            with profile(activities=[ProfilerActivity.CUDA]) as prof:
                if phase == "prefill":
                    model.prefill(0, prompt)
                else:
                    for step in range(4):
                        model.decode([5], [len(prompt) + step])
            times = {
                e.key: round(float(e.self_device_time_total), 1)
                for e in prof.key_averages()
                if e.self_device_time_total > 0
            }
            busiest = sorted(times.items(), key=lambda kv: -kv[1])
            found[phase] = {
                "attention": [k for k, _ in busiest if ATTENTION_KERNEL.search(k)][:6],
                "busiest_us": busiest[:8],
            }
    except Exception as exc:  # noqa: BLE001 - CUPTI may be refused (a sandbox)
        found["error"] = f"{type(exc).__name__}: {exc}"
    return found


def engine(path: Path, device: Device, graphs: bool | None = None) -> Any:
    """The engine under check. Decode goes as the server runs it (`graphs` None:
    through CUDA graphs on CUDA); on CPU (the dry run) through their path all the
    same (fixed buffers written in place, one graph id per batch size), without
    capture. `graphs=False`: every kernel launched from the CPU."""
    from ..engine.fused import FusedCausalLM

    if graphs is None and device is not Device.CUDA:
        graphs = True
    return FusedCausalLM(path, device, max_batch=8, max_len=1024, graphs=graphs)


def same_calls(path: Path, device: Device) -> dict[str, Any]:
    """The scripted calls on `device` against the CPU provider, for one graph."""
    on_device = scripted_calls(engine(path, device))
    return compare(on_device, scripted_calls(engine(path, Device.CPU, graphs=False)))


def two_models_at_once(path: Path, device: Device, alone: list[np.ndarray]) -> dict:
    """Two models of the same graph making the scripted calls from two threads at
    once (each capturing its CUDA graphs while the other works: the engine's GPU
    lock keeps one's capture from meeting the other's allocations), each compared
    with the calls made alone."""
    models = [engine(path, device) for _ in range(2)]
    results: list[list[np.ndarray] | BaseException] = [[], []]

    def run(i: int) -> None:
        try:
            results[i] = scripted_calls(models[i])
        except BaseException as exc:  # noqa: BLE001 - reported, not raised here
            results[i] = exc

    threads = [threading.Thread(target=run, args=(i,)) for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    errors = [repr(r) for r in results if isinstance(r, BaseException)]
    if errors:
        return {"errors": errors, "within_tolerance": False}
    worst = max(
        compare(r, alone)["max_relative_difference"]  # type: ignore[arg-type]
        for r in results
    )
    return {"max_relative_difference": worst, "within_tolerance": worst <= 1e-3}


def check(
    device: Device, out: Path, workdir: Path, run_8b: bool, precision: str
) -> dict[str, Any]:
    started = time.monotonic()
    path = random_graph("tiny", precision, workdir)
    os.environ["TIGER_ORT_PROFILE"] = str(out / "ort-profile")
    try:  # every kernel launched from the CPU, profiled
        plain = engine(path, device, graphs=False)
    finally:
        os.environ.pop("TIGER_ORT_PROFILE", None)
    plain_calls = scripted_calls(plain)
    nodes = attention_nodes(Path(plain.session.end_profiling()))
    del plain
    model = engine(path, device)
    report: dict[str, Any] = {
        "device_asked": device.value,
        "precision": precision,
        "provider": model.provider,
        "compute_capability_major": cuda_compute_major(),
        "cuda_graphs": model.graphs,
        "cuda_attention": cuda_attention(),
        "switches": {k: os.environ[k] for k in SWITCHES if k in os.environ},
        "attention": attention_kernels(nodes),
        "attention_times": attention_times(nodes),
    }
    on_device = scripted_calls(model)
    report["cuda_kernels"] = cuda_kernels(model) if model.provider == CUDA else None
    report["two_models_at_once"] = two_models_at_once(path, device, on_device)
    reference = engine(path, Device.CPU, graphs=False)
    cpu_calls = scripted_calls(reference)
    report["logits_against_cpu"] = compare(on_device, cpu_calls)
    report["logits_against_cpu_without_graphs"] = compare(plain_calls, cpu_calls)
    report["other_precisions"] = {  # the same calls through the other CUDA graphs
        other: same_calls(random_graph("tiny", other, workdir), device)
        for other in CUDA_GRAPHS
        if other != precision
    }
    report["bench_8b"] = None
    if run_8b and model.provider == CUDA:
        from .bench_gpu import main as bench_gpu

        shape = ["--shapes", "llama-3.1-8b", "--no-parity", "--prompt-tokens", "2000"]
        shape += ["--precision", precision]
        bench_gpu([*shape, "--workdir", str(workdir), "--out", str(out)])
        report["bench_8b"] = "bench-gpu.md and bench-gpu.json, next to this"
    report["seconds"] = round(time.monotonic() - started, 1)
    return report


def markdown(report: dict[str, Any]) -> str:
    logits = report["logits_against_cpu"]
    plain = report["logits_against_cpu_without_graphs"]
    kernels = ", ".join(f"{a['node']}: {a['provider']}" for a in report["attention"])
    return "\n".join(
        [
            "# gpu-check",
            "",
            f"- provider in use: {report['provider']} "
            f"(asked: {report['device_asked']})",
            f"- graph: a small random-weight Llama at {report['precision']}",
            f"- compute capability: {report['compute_capability_major']}",
            f"- decode through CUDA graphs' path: {report['cuda_graphs']}",
            f"- attention nodes: {kernels or 'none in the profile'}",
            f"- attention per engine call (ORT's profile, without CUDA graphs): "
            f"{json.dumps(report['attention_times'])}",
            f"- attention kernels allowed (TIGER_CUDA_ATTENTION): "
            f"{report['cuda_attention']}; ORT attention switches: "
            f"{report['switches'] or 'none set'}",
            f"- CUDA kernels: {json.dumps(report['cuda_kernels'])}",
            f"- logits against the CPU provider over {logits['calls']} calls: max "
            f"relative difference {logits['max_relative_difference']:.2e}, top-1 "
            f"agreement {logits['top1_agreement']:.4f}, within fp16 tolerance "
            f"({FP16_TOLERANCE}): {'yes' if logits['within_tolerance'] else 'NO'}",
            f"- the same without CUDA graphs: max relative difference "
            f"{plain['max_relative_difference']:.2e}, top-1 agreement "
            f"{plain['top1_agreement']:.4f}",
            f"- two models from two threads at once, against the calls alone: "
            f"{json.dumps(report['two_models_at_once'])}",
            *(
                f"- the same calls through the {other} graph: max relative "
                f"difference {c['max_relative_difference']:.2e}, top-1 agreement "
                f"{c['top1_agreement']:.4f}, within tolerance: "
                f"{'yes' if c['within_tolerance'] else 'NO'}"
                for other, c in report["other_precisions"].items()
            ),
            f"- 8B-shape bench: {report['bench_8b'] or 'not run'}",
            f"- {report['seconds']} s",
            "",
        ]
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    default = "cuda" if cuda_can_load() else "cpu"
    parser.add_argument("--device", choices=["cuda", "cpu"], default=default)
    parser.add_argument("--out", type=Path, default=Path("gpu-check"))
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--no-8b", action="store_true", help="skip the 8B bench")
    parser.add_argument(
        "--serve",
        metavar="HOME",
        type=Path,
        help="then the server end to end on the device, serving the embedded model "
        "of the store HOME at --precision, answers compared with CPU (serve_check)",
    )
    parser.add_argument(
        "--precision",
        default="fp16",
        choices=PRECISIONS,
        help="the graphs checked: fp16 (the default), or int4 or int8 (their fp16-"
        "activation graphs on CUDA; see models.precision)",
    )
    add_import_gguf(parser, "with --serve:")
    args = parser.parse_args(argv)
    if args.import_gguf and not args.serve:
        parser.error("--import-gguf needs --serve")
    try:
        precision = on_cuda(args.precision)
    except ValueError as exc:
        parser.error(str(exc))
    args.out.mkdir(parents=True, exist_ok=True)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="tiger-gpu-check-"))
    report = check(Device(args.device), args.out, workdir, not args.no_8b, precision)
    (args.out / "check.json").write_text(json.dumps(report, indent=2))
    (args.out / "check.md").write_text(markdown(report))
    print(markdown(report))
    if report["provider"] not in (CUDA if args.device == "cuda" else CPU,):
        raise SystemExit("the provider in use is not the one asked for")
    checked = [
        report[k]
        for k in (
            "logits_against_cpu",
            "logits_against_cpu_without_graphs",
            "two_models_at_once",
        )
    ]
    if not all(
        c["within_tolerance"] for c in checked + [*report["other_precisions"].values()]
    ):
        raise SystemExit("logits outside tolerance (see the report)")
    if args.serve:
        serve_check(
            ["--device", args.device, "--home", str(args.serve), "--out", str(args.out)]
            + ["--precision", precision]
            + (["--against", "cpu"] if args.device == "cuda" else [])
            + (["--import-gguf", str(args.import_gguf)] if args.import_gguf else [])
        )


if __name__ == "__main__":
    main()
