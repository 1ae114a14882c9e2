"""`make bench`'s 1B section: decode speed where the weights dominate.

The embedded 135M model's lead over llama.cpp comes partly from per-token
overheads that fade as models grow. So a random-weight 1.07B Llama (hidden 2048,
16 layers, 32/8 heads, SmolLM2's tokenizer, tied embedding; speed does not
depend on the values) is kept under `$TIGER_HOME/bench/llama-1b`, and Tiger's
engine decodes it in-process, one sequence and eight at once, three runs each
(min, median, max: the spread is part of the result). Tiger's int4 graph is
built with ORT's quantizer.

With `--llama-server PATH`, llama.cpp's side runs too. The checkpoint goes
through llama.cpp's own `convert_hf_to_gguf.py` (from the sources above the
binary's `build/bin`; it needs `sentencepiece` importable) and `llama-quantize`,
to Q4_0 and to Q4_K_M (the common download: Q4_K, with Q6_K for the embedding or
head and for some layers' V and down projections). Tiger then also builds its
graphs from those files' blocks, the same weights as llama.cpp's. `llama-server`
(2 threads, 8 slots) decodes one stream (its own `predicted_per_second`) and eight
concurrent ones (their tokens over the wall clock). Tiger's engine and llama.cpp's
server are up together and take turns, run by run.

`python -m tiger_grpc.tools.bench_scale [--llama-server PATH]` runs it alone.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from ..config import DEFAULT_MODEL_ID, Device, default_home
from ..engine.fused import FusedCausalLM
from ..models.embedded import ensure_default_model
from ..models.pipeline import build_graph
from ..models.store import HF_DIR, ModelStore
from .bench_chat import llama_server
from .bench_report import target_lines
from .stack import API_KEY

SHAPE = {
    "hidden_size": 2048,
    "intermediate_size": 8192,
    "num_hidden_layers": 16,
    "num_attention_heads": 32,
    "num_key_value_heads": 8,
    "max_position_embeddings": 8192,
    "rope_theta": 100000.0,
    "tie_word_embeddings": True,
}
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "chat_template.jinja",
)
STEPS, RUNS, STREAMS = 48, 3, 8
PROMPT = [504, 3777, 253, 655, 28, 1345, 30, 216]  # token ids (llama.cpp takes them)
TIGER_ORT = "Tiger int4 (ORT's quantizer)"
QUANTS = ("Q4_0", "Q4_K_M")  # llama-quantize's names


def tiger_row(kind: str) -> str:
    return f"Tiger int4 (the GGUF's {kind} blocks)"


def llama_row(kind: str) -> str:
    return f"llama.cpp {kind} (llama-server)"


def llama_quantize(
    binary: Path, source: Path, target: Path, kind: str, *more: str
) -> None:
    """llama.cpp's `llama-quantize` (next to `binary`, llama-server) of `source` to
    `kind`, written under another name and renamed when whole."""
    partial = target.with_suffix(".partial")
    subprocess.run(
        [str(binary.parent / "llama-quantize"), *more, str(source), str(partial)]
        + [kind, "2"],
        check=True,
        capture_output=True,
    )
    partial.rename(target)


def checkpoint(home: Path) -> Path:
    """The random 1B checkpoint (bf16 safetensors, made once); its HF directory."""
    root = home / "bench" / "llama-1b"
    hf = root / HF_DIR
    if (hf / "model.safetensors").is_file():
        return hf
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    store = ModelStore(home)
    ensure_default_model(store, "int4")
    tokenizer_dir = store.path(DEFAULT_MODEL_ID) / HF_DIR
    config = LlamaConfig(vocab_size=49152, bos_token_id=1, eos_token_id=2, **SHAPE)
    torch.manual_seed(0)
    scratch = root / "scratch"
    shutil.rmtree(scratch, ignore_errors=True)
    LlamaForCausalLM(config).to(torch.bfloat16).save_pretrained(scratch)
    for name in TOKENIZER_FILES:
        if (tokenizer_dir / name).is_file():
            shutil.copy(tokenizer_dir / name, scratch / name)
    shutil.rmtree(hf, ignore_errors=True)
    scratch.rename(hf)
    return hf


class _TigerRuns:
    """Tiger's engine on a graph, its rows prefilled once: `run(rows)` decodes
    `STEPS` tokens for `rows` sequences and gives tokens/s."""

    def __init__(self, graph: Path) -> None:
        self.model = FusedCausalLM(graph, Device.CPU, STREAMS, 1024)
        for row in range(STREAMS):
            self.model.prefill(row, PROMPT)

    def run(self, rows: int) -> float:
        started = time.perf_counter()
        for i in range(STEPS):
            self.model.decode(
                [PROMPT[i % len(PROMPT)]] * rows, [len(PROMPT) + i] * rows
            )
        return rows * STEPS / (time.perf_counter() - started)


def tiger_speed(graph: Path) -> dict[str, list[float]]:
    """Tokens/s of one sequence and of `STREAMS` at once, `RUNS` runs each."""
    return _interleaved([_TigerRuns(graph).run])[0]


def _interleaved(
    engines: Sequence[Callable[[int], float]],
) -> list[dict[str, list[float]]]:
    """`RUNS` runs of one sequence, then of `STREAMS`, by each of `engines` (a
    run's tokens/s for so many rows) in turn, the order turning each run: this
    machine's speed drifts by tens of percent within minutes, so the engines
    compared share its good and its bad moments."""
    speeds: list[dict[str, list[float]]] = [{"one": [], "eight": []} for _ in engines]
    order = list(range(len(engines)))
    for key, rows in (("one", 1), ("eight", STREAMS)):
        for r in range(RUNS):
            turn = r % len(order)
            for i in order[turn:] + order[:turn]:
                speeds[i][key].append(engines[i](rows))
    return speeds


def llama_ggufs(binary: Path, hf: Path) -> dict[str, Path]:
    """The checkpoint as llama.cpp's `QUANTS` (converted and quantized once; each
    file is written under another name and renamed when whole)."""
    files = {kind: hf.parent / f"{kind.lower()}.gguf" for kind in QUANTS}
    if all(path.is_file() for path in files.values()):
        return files
    sources = binary.resolve().parents[2]
    f16 = hf.parent / "f16.gguf"
    convert = [sys.executable, str(sources / "convert_hf_to_gguf.py"), str(hf)]
    paths = [str(sources / "gguf-py"), os.environ.get("PYTHONPATH", "")]
    try:
        subprocess.run(
            [*convert, "--outfile", str(f16), "--outtype", "f16"],
            check=True,
            capture_output=True,
            env={**os.environ, "PYTHONPATH": os.pathsep.join(p for p in paths if p)},
        )
        for kind, path in files.items():
            llama_quantize(binary, f16, path, kind)
    finally:
        f16.unlink(missing_ok=True)
    return files


class _LlamaRuns:
    """llama.cpp's server at `url`: `run(rows)` completes `STEPS` tokens for each
    of `rows` requests at once; one request's speed is the server's own
    `predicted_per_second`, several requests' their tokens over the wall clock."""

    def __init__(self, url: str) -> None:
        self.url = url

    def _complete(self, shift: int) -> dict[str, Any]:
        body = {
            "prompt": [PROMPT[0] + shift, *PROMPT[1:]],
            "n_predict": STEPS,
            "temperature": 0,
            "ignore_eos": True,
            "cache_prompt": False,
        }
        request = urllib.request.Request(
            f"{self.url}/completion",
            json.dumps(body).encode(),
            {"Content-Type": "application/json", "Authorization": f"Bearer {API_KEY}"},
        )
        with urllib.request.urlopen(request, timeout=300) as reply:
            return dict(json.load(reply)["timings"])

    def run(self, rows: int) -> float:
        if rows == 1:
            return float(self._complete(0)["predicted_per_second"])
        with ThreadPoolExecutor(rows) as pool:
            started = time.perf_counter()
            done = list(pool.map(self._complete, range(rows)))
            elapsed = time.perf_counter() - started
        return sum(t["predicted_n"] for t in done) / elapsed


def measure(home: Path, llama: Path | None = None) -> list[dict[str, Any]]:
    hf = checkpoint(home)
    out = hf.parent
    rows = []
    # Every graph is built every run (seconds to a minute): one kept from older
    # code could hold other weights or other activations (a head of ORT's blocks
    # where the file's are read now; float inputs where int8 ones are taken now).
    build_graph(hf, out / "int4-ort", "int4")
    rows.append({"engine": TIGER_ORT, **tiger_speed(out / "int4-ort" / "model.onnx")})
    if llama is not None:
        try:
            ggufs = llama_ggufs(llama, hf)
        except (OSError, subprocess.CalledProcessError) as exc:
            detail = (getattr(exc, "stderr", b"") or b"").decode(errors="replace")
            reason = (detail.strip().splitlines() or [str(exc)])[-1]
            print(f"  llama.cpp side skipped: {reason}", file=sys.stderr)
            return rows
        for kind, gguf in ggufs.items():
            graph = out / f"int4-{kind.lower()}" / "model.onnx"
            build_graph(hf, graph.parent, "int4", gguf=gguf)
            tiger, peer = _side_by_side(graph, llama, gguf)
            rows.append({"engine": tiger_row(kind), **tiger})
            rows.append({"engine": llama_row(kind), **peer})
    return rows


def _side_by_side(
    graph: Path, llama: Path, gguf: Path
) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    """Tiger's engine on `graph` and llama.cpp's server on `gguf`, up at once (an
    idle one takes no CPU) and taking turns; both are gone when it returns."""
    with llama_server(llama, gguf, slots=STREAMS, context=8192) as url:
        tiger, peer = _interleaved([_TigerRuns(graph).run, _LlamaRuns(url).run])
    return tiger, peer


def _spread(values: list[float]) -> str:
    low, mid, high = np.min(values), np.median(values), np.max(values)
    return f"{mid:.1f} ({low:.1f}-{high:.1f})"


def _ratios(rows: list[dict[str, Any]], kind: str) -> tuple[float, float] | None:
    """Tiger over llama.cpp on the `kind` file, one stream and eight (medians)."""
    by = {r["engine"]: r for r in rows}
    tiger, llama = by.get(tiger_row(kind)), by.get(llama_row(kind))
    if tiger is None or llama is None:
        return None
    one = float(np.median(tiger["one"]) / np.median(llama["one"]))
    return one, float(np.median(tiger["eight"]) / np.median(llama["eight"]))


def targets(rows: list[dict[str, Any]]) -> list[tuple[str, float, str, bool]]:
    found = _ratios(rows, "Q4_0")
    if found is None:
        return []
    one, eight = found
    return [
        ("1B one stream: Tiger / llama.cpp Q4_0", one, ">= 1.0", one >= 1.0),
        ("1B aggregate at 8: Tiger / llama.cpp Q4_0", eight, ">= 1.3", eight >= 1.3),
    ]


def markdown(rows: list[dict[str, Any]]) -> str:
    lines = [
        "1B scale: a random-weight 1.07B Llama, greedy decode tokens/s, median "
        f"(min-max) of {RUNS} runs; Tiger's engine in-process, llama.cpp's server",
        "",
        "| engine | one stream | aggregate at 8 |",
        "|---|---:|---:|",
    ]
    for r in rows:
        lines.append(f"| {r['engine']} | {_spread(r['one'])} | {_spread(r['eight'])} |")
    k_quants = _ratios(rows, "Q4_K_M")
    if k_quants is not None:
        one, eight = k_quants
        lines += [
            "",
            f"Q4_K_M (no target): Tiger / llama.cpp {one:.2f} on one stream, "
            f"{eight:.2f} at 8",
        ]
    found = targets(rows)
    return "\n".join([*lines, *(target_lines(found) if found else [])]) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(prog="tiger-bench-scale", description=__doc__)
    parser.add_argument("--llama-server", type=Path, default=None)
    args = parser.parse_args()
    print(markdown(measure(default_home(), args.llama_server)))


if __name__ == "__main__":
    main()
