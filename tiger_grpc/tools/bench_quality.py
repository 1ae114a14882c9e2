"""`make bench`'s quality table: every precision of the embedded model's fused
graph against its fp32 optimum export, on the held-out text
(`tiger_grpc.models.quality`): top-1 agreement, KL divergence, perplexity ratio,
and the single-stream decode step. int4 is measured both ways: from the GGUF's
own blocks (the default) and quantized again by ORT from the dequantized weights
(what the int4 graph was before); int4-kv8 is the default's weights with an int8
KV cache, measured also against int4 (its float32 cache) past 4,000 positions of a
longer text (`long_ids`), where its scales meet positions its calibration did not
reach (the whole text only: not with `--tokens`). The graphs are built into a
scratch directory from the store's weights; the store is not touched.

With llama.cpp's binaries (`--llama-server PATH`: `llama-quantize` is next to
it), K-quant files are made from the embedded GGUF (`KQUANT_FILES`), and their
int4 graphs, from their own blocks and from ORT's quantizer, are measured against
each file's own weights in fp32 (its fused fp32 graph): what a K-quant import
gets.

`python -m tiger_grpc.tools.bench_quality [--tokens N] [--llama-server PATH]`
runs it alone.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from ..config import Device, default_home
from ..engine.fused import FusedCausalLM
from ..engine.optimum import OnnxCausalLM
from ..models import quality
from ..models.embedded import DEFAULT_MODEL_ID, ensure_default_model, find_gguf
from ..models.fromgguf import convert_gguf
from ..models.graph.kvcache import CALIBRATION
from ..models.loaded import load_tokenizer
from ..models.pipeline import build_graph
from ..models.store import HF_DIR, ModelManifest, ModelStore
from .bench_report import target_lines
from .bench_scale import llama_quantize

# (row name, precision, from the GGUF's blocks)
GRAPHS = [
    ("fp32", "fp32", False),
    ("fp16", "fp16", False),
    ("int8 (ORT, from dequantized weights)", "int8", False),
    ("int4 (ORT, from dequantized weights: before)", "int4", False),
    ("int4 (the GGUF's own blocks: default)", "int4", True),
    ("int4-kv8 (the GGUF's own blocks, int8 KV cache)", "int4-kv8", True),
    (
        "int4-fp16 (the GGUF's own blocks, fp16 activations: int4 on CUDA)",
        "int4-fp16",
        True,
    ),
]
STEPS = 100  # decode steps timed per graph
LONG_FROM, CHUNK = 4000, 512  # the long comparison: from where, prefilled by
PREFIX = 32  # tokens prefilled before the timed steps
# The K-quant files made for `measure_kquant`: (name, type, llama-quantize's
# options). This model's width (576) is not a multiple of 256, so llama.cpp falls
# back for every tensor but the down projections (K 1,536): Q4_K to Q5_0, Q3_K and
# Q2_K to Q4_0 (IQ4_NL in older builds), Q6_K to Q8_0. So the K-quants measured
# are the down projections': Q4_K and Q6_K in Q4_K_M, Q3_K in Q2_K, and Q2_K when
# asked for.
KQUANT_FILES = (
    ("Q4_K_M file", "Q4_K_M", ()),
    ("Q2_K file (its down projections Q3_K)", "Q2_K", ()),
    (
        "Q2_K file with Q2_K down projections",
        "Q2_K",
        ("--tensor-type", "ffn_down=q2_k"),
    ),
)


def measure(home: Path, tokens: int | None = None) -> list[dict[str, Any]]:
    """The table's rows; `tokens` limits the text (the whole of it by default)."""
    model_dir, manifest, ids = _held_out(home, tokens)
    reference = quality.reference_logits(
        OnnxCausalLM(model_dir / manifest.onnx_path, Device.CPU), ids
    )
    rows, built = [], {}
    with tempfile.TemporaryDirectory(prefix="tiger-quality-") as scratch:
        for name, precision, exact in GRAPHS:
            out = Path(scratch) / name.split()[0] / ("gguf" if exact else "ort")
            gguf = find_gguf() if exact else None
            graph = (model_dir / HF_DIR, out, precision, gguf)
            rows.append(_row(name, graph, reference, ids))
            built[(precision, exact)] = out / "model.onnx"
        if tokens is None:  # the whole text: the long comparison too
            float_cache = built[("int4", True)]
            int8_cache = built[("int4-kv8", True)]
            rows.append(_long_context(model_dir, float_cache, int8_cache))
    return rows


def long_ids(tokenizer: Any) -> list[int]:
    """The held-out text, the calibration text and the held-out text again (6,769
    tokens of the embedded model)."""
    texts = (quality.HELD_OUT, CALIBRATION, quality.HELD_OUT)
    return [int(i) for i in tokenizer.encode("\n\n".join(t.read_text() for t in texts))]


def _long_context(
    model_dir: Path, float_cache: Path, int8_cache: Path
) -> dict[str, Any]:
    """int4-kv8 against int4 (the same weights, a float32 cache) past `LONG_FROM`
    positions of `long_ids`, teacher-forced: where an int8 cache's scales meet
    positions the calibration did not reach. Its decode step there too."""
    ids = long_ids(load_tokenizer(str(model_dir / HF_DIR)))
    logits, step_ms = [], 0.0
    for path in (float_cache, int8_cache):
        model = FusedCausalLM(path, Device.CPU, 1, len(ids))
        for start in range(0, LONG_FROM, CHUNK):
            model.prefill(0, ids[: min(start + CHUNK, LONG_FROM)], start)
        started, rows = time.perf_counter(), []
        for i in range(LONG_FROM, len(ids) - 1):
            rows.append(np.array(model.decode([ids[i]], [i])[0]))
        step_ms = (time.perf_counter() - started) * 1000 / len(rows)
        logits.append(np.stack(rows))
    reference, measured_logits = logits
    measured = quality.compare(reference, measured_logits, ids[LONG_FROM:])
    positions = f"{LONG_FROM:,}-{len(ids) - 1:,}"
    name = f"int4-kv8 against int4's float32 cache, positions {positions}"
    return _table_row(name, "", measured, step_ms)


def measure_kquant(
    home: Path, llama_server: Path, tokens: int | None = None
) -> list[dict[str, Any]]:
    """K-quant files of the embedded model (`KQUANT_FILES`): each one's int4 graph
    from its own blocks and from ORT's quantizer, against its own weights in
    fp32."""
    _, _, ids = _held_out(home, tokens)
    rows = []
    for file, kind, options in KQUANT_FILES:
        with tempfile.TemporaryDirectory(prefix="tiger-kquant-") as scratch:
            gguf, hf = Path(scratch) / f"{kind}.gguf", Path(scratch) / "hf"
            more = ("--allow-requantize", *options)
            llama_quantize(llama_server, find_gguf(), gguf, kind, *more)
            convert_gguf(gguf, hf)
            _, fp32 = _built((hf, Path(scratch) / "fp32", "fp32", None), ids)
            reference = quality.fused_logits(fp32, ids)
            for name, exact in (
                ("its own blocks", True),
                ("ORT's int4 over them", False),
            ):
                out = Path(scratch) / ("gguf" if exact else "ort")
                graph = (hf, out, "int4", gguf if exact else None)
                rows.append(_row(f"{file}, {name}", graph, reference, ids))
    return rows


def _held_out(home: Path, tokens: int | None) -> tuple[Path, ModelManifest, list[int]]:
    """The embedded model (prepared if need be): its directory, its manifest, and
    the held-out text's ids (the first `tokens`)."""
    store = ModelStore(home)
    manifest = ensure_default_model(store, "int4")
    model_dir = store.path(DEFAULT_MODEL_ID)
    ids = quality.held_out_ids(load_tokenizer(str(model_dir / HF_DIR)), tokens)
    return model_dir, manifest, ids


def _row(
    name: str,
    graph: tuple[Path, Path, str, Path | None],
    reference: np.ndarray,
    ids: list[int],
) -> dict[str, Any]:
    """Builds `graph` (HF weights, out, precision, GGUF file) and measures it on
    `ids` against the `reference` logits."""
    how, model = _built(graph, ids)
    measured = quality.compare(reference, quality.fused_logits(model, ids), ids)
    return _table_row(name, how, measured, _step_ms(model, ids))


def _table_row(
    name: str, how: str, measured: quality.Quality, step_ms: float
) -> dict[str, Any]:
    """A row of the quality table: graph `name`, quantized `how`."""
    return {
        "graph": name,
        "quantization": how,
        "tokens": measured.tokens,
        "top1": measured.top1,
        "kl": measured.kl,
        "perplexity": measured.perplexity,
        "perplexity_ratio": measured.perplexity_ratio,
        "decode_step_ms": step_ms,
    }


def _built(
    graph: tuple[Path, Path, str, Path | None], ids: list[int]
) -> tuple[str, FusedCausalLM]:
    """`graph` (HF weights, out, precision, GGUF file) built, and loaded to run
    `ids`: how its weights were quantized, and the model."""
    hf, out, precision, gguf = graph
    how = build_graph(hf, out, precision, gguf=gguf)
    return how, FusedCausalLM(out / "model.onnx", Device.CPU, 1, len(ids) + 1)


def _step_ms(model: FusedCausalLM, ids: list[int]) -> float:
    """The median of three runs of `STEPS` single-sequence decode steps."""
    runs = []
    for _ in range(3):
        model.prefill(0, ids[:PREFIX])
        started = time.perf_counter()
        for i in range(STEPS):
            model.decode([ids[PREFIX + i]], [PREFIX + i])
        runs.append((time.perf_counter() - started) * 1000 / STEPS)
    return float(np.median(runs))


def markdown(
    rows: list[dict[str, Any]], kquant: list[dict[str, Any]] | None = None
) -> str:
    tokens = rows[0]["tokens"] if rows else 0
    lines = [
        f"Quality against the fp32 optimum export, teacher-forced on {tokens} "
        "held-out tokens; decode step: one sequence, in-process",
        "",
        *_table(rows),
        *target_lines(targets(rows), digits=4),
    ]
    if kquant:
        lines += [
            "",
            "K-quant files made from the embedded GGUF, each against its own "
            "weights in fp32 (its fused fp32 graph), the same text",
            "",
            *_table(kquant),
        ]
    return "\n".join(lines) + "\n"


def _table(rows: list[dict[str, Any]]) -> list[str]:
    lines = [
        "| graph | top-1 agreement | KL (nats/token) | perplexity | ratio | "
        "decode step ms |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['graph']} | {r['top1']:.1%} | {r['kl']:.4f} | "
            f"{r['perplexity']:.2f} | {r['perplexity_ratio']:.4f} | "
            f"{r['decode_step_ms']:.2f} |"
        )
    return lines


def targets(rows: list[dict[str, Any]]) -> list[tuple[str, float, str, bool]]:
    """The default int4 graph's quality targets."""
    default = next(r for r in rows if "default" in r["graph"])
    top1, ratio = default["top1"], default["perplexity_ratio"]
    return [
        ("int4 top-1 agreement with fp32", top1, ">= 0.97", top1 >= 0.97),
        ("int4 perplexity / fp32", ratio, "<= 1.01", ratio <= 1.01),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(prog="tiger-bench-quality", description=__doc__)
    parser.add_argument("--tokens", type=int, default=None)
    parser.add_argument("--llama-server", type=Path, default=None)
    args = parser.parse_args()
    if args.tokens is not None and args.tokens < PREFIX + STEPS:
        parser.error(
            f"--tokens {args.tokens}: at least {PREFIX + STEPS} (the decode step is "
            f"timed over {STEPS} tokens after {PREFIX})"
        )
    rows = measure(default_home(), args.tokens)
    kquant = None
    if args.llama_server:
        kquant = measure_kquant(default_home(), args.llama_server, args.tokens)
    print(markdown(rows, kquant))


if __name__ == "__main__":
    main()
