"""`make bench-gpu`: the CUDA path, measured.

A random-weight model of Llama-3.1-8B's exact shape (no weights are needed to
measure speed) is built as Tiger's fused fp16 graph, then the engine the server
runs (`FusedCausalLM`: KV cache on the device, bound by address) decodes greedily
at 1, 8 and 32 concurrent streams. Batch-1 decode is compared with the
memory-bandwidth bound (every weight read once per token: ~16 GB for 8B in fp16,
H100 ~3.35 TB/s), and the aggregate at 32 streams with batch 1. The embedded model
is measured the same way, and its greedy text on this device is put next to the
fp32 optimum export's on the CPU. Prints one table and writes bench-gpu.{json,md}.

Without a CUDA provider the 8B shape is skipped (16 GB of fp16 on CPU cores says
nothing about the GPU path); `--shapes tiny,embedded --device cpu` checks the script.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..config import Device, cuda_graphs, default_home, ort_spin
from ..engine.providers import nvidia_smi
from ..models.precision import GRAPH_TYPES, resolve_precision
from ..models.store import ModelStore
from .bench_report import gpu_markdown

# The embedded model's modules (the API's pydantic models, GGUF, optimum) are
# imported where the embedded model is measured, so the 8B shape and
# `make gpu-check` run on a GPU machine that has none of that stack.

# LlamaConfig fields of the shapes the bench can build with random weights.
SHAPES: dict[str, dict[str, Any]] = {
    "llama-3.1-8b": {
        "hidden_size": 4096,
        "intermediate_size": 14336,
        "num_hidden_layers": 32,
        "num_attention_heads": 32,
        "num_key_value_heads": 8,
        "vocab_size": 128256,
        "rms_norm_eps": 1e-5,
        "rope_theta": 500000.0,
        "max_position_embeddings": 131072,
        "rope_scaling": {
            "rope_type": "llama3",
            "factor": 8.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 8192,
        },
        "tie_word_embeddings": False,
    },
    "tiny": {  # checks the script anywhere in seconds
        "hidden_size": 256,
        "intermediate_size": 512,
        "num_hidden_layers": 4,
        "num_attention_heads": 8,
        "num_key_value_heads": 2,
        "vocab_size": 32000,
        "rms_norm_eps": 1e-5,
        "rope_theta": 500000.0,
        "max_position_embeddings": 8192,
        "tie_word_embeddings": False,
    },
}
# Peak memory bandwidth (TB/s) by GPU name, for the bound.
BANDWIDTH_TBS = {"H200": 4.8, "H100 PCIe": 2.0, "H100": 3.35, "A100": 2.0, "L4": 0.3}
GRAPH_MAX_LEN = 4096  # RoPE table length of the random graphs (bench sequences fit)


@dataclass
class Row:
    model: str
    provider: str
    precision: str
    weights_gb: float
    streams: int
    prompt_tokens: int
    prefill_ms: float  # one prompt, mean over the streams
    step_ms: float  # one decode step for every stream
    tokens_per_s_per_stream: float
    aggregate_tokens_per_s: float
    bound_tokens_per_s: float | None  # bandwidth / weight bytes (batch-1 ceiling)


def gpu_bandwidth_tbs() -> tuple[str | None, float | None]:
    """The first GPU's name (nvidia-smi) and its peak bandwidth, when known."""
    name = nvidia_smi("name")
    if name is None:
        return None, None
    for key, tbs in BANDWIDTH_TBS.items():
        if key in name:
            return name, tbs
    return name, None


def random_graph(shape: str, precision: str, workdir: Path) -> Path:
    """Tiger's fused graph of `shape` with random weights, built once per workdir."""
    from transformers import LlamaConfig

    from ..models.graph import LlamaShape, build_fused_graph, random_tensors

    bits, dtype = GRAPH_TYPES[precision]
    path = workdir / f"{shape}-random-{precision}" / "model.onnx"
    done = path.parent / "complete"
    if done.is_file():
        return path
    config = LlamaConfig(**SHAPES[shape])
    started = time.monotonic()

    def progress(layer: int, layers: int) -> None:
        print(
            f"  building {shape} ({precision}, random weights): layer {layer}/{layers} "
            f"({time.monotonic() - started:.0f}s)",
            flush=True,
        )

    build_fused_graph(
        config,
        random_tensors(LlamaShape.of(config)),
        path,
        dtype,
        max_len=GRAPH_MAX_LEN,
        bits=bits,  # quantized by ORT's quantizer, as a float checkpoint is
        progress=progress,
    )
    done.write_text("")
    return path


def weights_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.parent.glob(path.name + "*"))


def measure(
    label: str,
    path: Path,
    precision: str,
    device: Device,
    streams: list[int],
    prompt_tokens: int,
    decode_tokens: int,
    bandwidth_tbs: float | None,
    spin: bool = True,
) -> list[Row]:
    from ..engine.fused import FusedCausalLM

    longest = prompt_tokens + decode_tokens + 8
    model = FusedCausalLM(path, device, max(streams), longest, spin=spin)
    size = weights_bytes(path)
    bound = bandwidth_tbs * 1e12 / size if bandwidth_tbs else None
    rng = np.random.default_rng(0)
    vocab = model.vocab_size
    # Warm-up: kernels, cuBLAS handles and the arena, outside the timings.
    model.prefill(0, [int(t) for t in rng.integers(10, vocab, prompt_tokens)])
    for step in range(4):
        model.decode([11], [prompt_tokens + step])
    rows = []
    for n in streams:
        model.reset()
        prompts = [
            [int(t) for t in rng.integers(10, vocab, prompt_tokens)] for _ in range(n)
        ]
        started = time.perf_counter()
        tokens = [int(np.argmax(model.prefill(i, p))) for i, p in enumerate(prompts)]
        prefill_s = (time.perf_counter() - started) / n
        lengths = [prompt_tokens] * n
        started = time.perf_counter()
        for _ in range(decode_tokens):
            logits = model.decode(tokens, lengths)
            tokens = [int(t) for t in logits.argmax(-1)]
            lengths = [length + 1 for length in lengths]
        seconds = time.perf_counter() - started
        rows.append(
            Row(
                model=label,
                provider=model.provider,
                precision=precision,
                weights_gb=round(size / 1e9, 2),
                streams=n,
                prompt_tokens=prompt_tokens,
                prefill_ms=round(prefill_s * 1000, 1),
                step_ms=round(seconds / decode_tokens * 1000, 2),
                tokens_per_s_per_stream=round(decode_tokens / seconds, 1),
                aggregate_tokens_per_s=round(n * decode_tokens / seconds, 1),
                bound_tokens_per_s=round(bound, 1) if bound else None,
            )
        )
        print(f"  {label} x{n}: {rows[-1].aggregate_tokens_per_s} tok/s", flush=True)
    return rows


def greedy_parity(
    store: ModelStore, precision: str, device: Device, tokens: int, spin: bool = True
) -> dict[str, Any]:
    """The embedded model's greedy answer on `device` (fused graph) and on the CPU
    (fp32 optimum export), token for token."""
    from transformers import AutoTokenizer

    from ..api.params import ChatMessage
    from ..engine.fused import FusedCausalLM
    from ..engine.optimum import OnnxCausalLM
    from ..engine.request import render_prompt
    from ..models.embedded import DEFAULT_MODEL_ID, ensure_default_model

    manifest = ensure_default_model(store, precision)
    directory = store.path(DEFAULT_MODEL_ID)
    tokenizer = AutoTokenizer.from_pretrained(directory / manifest.hf_path)
    question = ChatMessage("user", "Why is the sky blue?")
    prompt = render_prompt(tokenizer, [question])
    graph = directory / manifest.fused_graphs[precision]
    fused = FusedCausalLM(graph, device, 1, spin=spin)
    logits, ids = fused.prefill(0, prompt), []
    for _ in range(tokens):
        ids.append(int(np.argmax(logits)))
        logits = fused.decode([ids[-1]], [len(prompt) + len(ids) - 1])[0]
    reference = OnnxCausalLM(directory / manifest.onnx_path, Device.CPU)
    cache, feed, expected = reference.empty_cache(), prompt, []
    for _ in range(tokens):
        logits, cache = reference.forward(feed, cache)
        expected.append(int(np.argmax(logits)))
        feed = [expected[-1]]
    same = next(
        (i for i, (a, b) in enumerate(zip(ids, expected, strict=True)) if a != b),
        tokens,
    )
    return {
        "provider": fused.provider,
        "precision": precision,
        "tokens": tokens,
        "same_leading_tokens": same,
        "text": tokenizer.decode(ids),
        "cpu_fp32_text": tokenizer.decode(expected),
    }


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tiger-bench-gpu",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add = parser.add_argument
    add(
        "--shapes",
        default="llama-3.1-8b,embedded",
        help=f"comma-separated: {', '.join(SHAPES)}, embedded",
    )
    add("--device", choices=[d.value for d in Device], default="auto")
    add("--precision", default=None, help="default: fp16 on CUDA")
    add("--streams", default="1,8,32")
    add("--prompt-tokens", type=int, default=128)
    add("--tokens", type=int, default=128, help="decode steps")
    add("--parity-tokens", type=int, default=48)
    add("--no-parity", action="store_true")
    add("--bandwidth-tbs", type=float, default=None, help="peak (default: by GPU name)")
    add("--workdir", type=Path, default=None, help="random graphs (TIGER_HOME/bench)")
    add("--out", type=Path, default=Path("bench-results"))
    return parser


def _measure_shapes(
    args: argparse.Namespace,
    device: Device,
    precision: str,
    bandwidth: float | None,
    store: ModelStore,
) -> list[Row]:
    from ..engine.providers import CUDA, choose_providers

    cuda = choose_providers(device)[0] == CUDA
    streams = [int(s) for s in args.streams.split(",")]
    rows: list[Row] = []
    for shape in args.shapes.split(","):
        if shape == "embedded":
            from ..models.embedded import DEFAULT_MODEL_ID, ensure_default_model

            manifest = ensure_default_model(store, precision)
            path = store.path(DEFAULT_MODEL_ID) / manifest.fused_graphs[precision]
        elif shape in SHAPES:
            if shape != "tiny" and not cuda:
                print(f"skipping {shape}: no CUDA provider here")
                continue
            path = random_graph(shape, precision, args.workdir or store.home / "bench")
        else:
            raise SystemExit(f"unknown shape {shape!r}")
        bound = bandwidth if cuda else args.bandwidth_tbs
        rows += measure(
            shape, path, precision, device, streams, args.prompt_tokens,
            args.tokens, bound, ort_spin(),
        )  # fmt: skip
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = _parser()
    args = parser.parse_args(argv)
    device = Device(args.device)
    from ..engine.providers import cuda_can_load

    if device is Device.AUTO and cuda_can_load():
        # CUDA, or stop at once: a session that fell back to CPU would spend the
        # GPU time building and timing the 8B shape on CPU cores.
        device = Device.CUDA
    try:
        precision = resolve_precision(
            args.precision or os.environ.get("TIGER_PRECISION"), device
        )
    except ValueError as exc:
        parser.error(str(exc))
    gpu, bandwidth = gpu_bandwidth_tbs()
    bandwidth = args.bandwidth_tbs or bandwidth
    store = ModelStore(default_home())
    rows = _measure_shapes(args, device, precision, bandwidth, store)
    parity = (
        None
        if args.no_parity
        else greedy_parity(store, precision, device, args.parity_tokens, ort_spin())
    )
    meta = {
        "gpu": gpu,
        "bandwidth_tbs": bandwidth,
        "precision": precision,
        "prompt_tokens": args.prompt_tokens,
        "decode_tokens": args.tokens,
        "cuda_graphs": cuda_graphs(),
        "date": time.strftime("%Y-%m-%d %H:%M"),
    }
    table = gpu_markdown(rows, meta, parity)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "bench-gpu.md").write_text(table)
    (args.out / "bench-gpu.json").write_text(
        json.dumps(
            {"meta": meta, "results": [asdict(r) for r in rows], "parity": parity},
            indent=2,
        )
    )
    print(table)
    print(f"wrote {args.out}/bench-gpu.json, bench-gpu.md")


if __name__ == "__main__":
    main()
