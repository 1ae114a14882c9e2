"""The one build pipeline: a Hugging Face directory becomes a served model.

Every way a model enters the store (the embedded model's preparation, a training,
an import, the test plugin's tiny model) writes its HF weights into a scratch
directory and then runs the same steps: the optimum export (the fp32 reference),
the fused graph of each precision, an optional check, the manifest, and the atomic
rename into the store. A failure or a cancel at any step leaves nothing behind.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ..runtime.ml import stop_if_cancelled
from .export import checkpoint_facts, export_onnx, sampling_defaults
from .precision import GRAPH_TYPES, INT8_CACHE, graph_dir, graph_path
from .store import HF_DIR, ONNX_DIR, ModelManifest, ModelStore

SOURCE_GGUF = "source.gguf"  # the GGUF file an import came from, kept with the model

Say = Callable[[str], None]
HEARTBEAT_S = 15.0


@dataclass(frozen=True)
class Reporting:
    """How a build reports: `say` gets each phase; `tick`, when set, also a
    heartbeat during the optimum export and layer counts during graph builds
    (at most every `every_s`); a set `cancel` stops the build at the next phase or
    layer (the optimum export itself runs to its end)."""

    say: Say = lambda message: None
    tick: Say | None = None
    cancel: threading.Event | None = field(default=None, compare=False)
    every_s: float = HEARTBEAT_S
    engine: str | None = None  # "for the CUDA engine", when the caller knows


QUIET = Reporting()


def build_graph(
    hf_dir: Path,
    out_dir: Path,
    precision: str,
    report: Reporting = QUIET,
    gguf: Path | None = None,
) -> str:
    """Writes the fused graph of a Llama checkpoint to `out_dir/model.onnx` (an int4
    one from the quantized blocks of `gguf`, the file the checkpoint came from,
    where it has them; with an int8 KV cache for the precisions that have one);
    returns how its weights (and cache) were quantized."""
    from .graph import build_fused_llama, kvcache

    what = f"Building the fused {precision} graph"
    if report.engine:
        what += f" for the {report.engine} engine"
    report.say(what)
    bits, dtype = GRAPH_TYPES[precision]
    facts = build_fused_llama(
        hf_dir,
        out_dir / "model.onnx",
        dtype,
        gguf=gguf,
        progress=_layer_progress(what, report),
        bits=bits,
    )
    quantization = str(facts["quantization"])
    if precision not in INT8_CACHE:
        return quantization
    stop_if_cancelled(report.cancel)
    if report.tick:
        report.tick(f"{what}: calibrating its int8 KV cache")
    kvcache.int8_cache(out_dir / "model.onnx", hf_dir, int(facts["max_length"]))
    return kvcache.with_int8_cache(quantization)


def _layer_progress(what: str, report: Reporting) -> Callable[[int, int], None]:
    last = time.monotonic()

    def progress(done: int, total: int) -> None:
        nonlocal last
        stop_if_cancelled(report.cancel)
        if report.tick and (done == total or time.monotonic() - last >= report.every_s):
            last = time.monotonic()
            report.tick(f"{what}: layer {done}/{total}")

    return progress


@contextlib.contextmanager
def _heartbeat(what: str, report: Reporting) -> Iterator[None]:
    """Says `what`, then (with `tick`) how long it has been running, every `every_s`."""
    report.say(what)
    started, done = time.monotonic(), threading.Event()

    def beat() -> None:
        while report.tick and not done.wait(report.every_s):
            report.tick(f"{what}: {time.monotonic() - started:.0f}s so far")

    thread = threading.Thread(target=beat, daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()
        thread.join()


def export(
    hf_dir: Path, onnx_dir: Path, dtype: str, device: str, report: Reporting
) -> None:
    """The optimum export, with a heartbeat; on a GPU its memory is given back."""
    with _heartbeat(
        f"Exporting to ONNX with optimum ({dtype} on {device.upper()})", report
    ):
        try:
            export_onnx(hf_dir, onnx_dir, dtype=dtype, device=device)
        finally:
            if device == "cuda":
                import torch

                torch.cuda.empty_cache()


def build_model(
    store: ModelStore,
    model_id: str,
    source: str,
    write_hf: Callable[[Path], None],
    precisions: Sequence[str],
    report: Reporting = QUIET,
    export_as: tuple[str, str] = ("fp32", "cpu"),
    check: Callable[[Path], None] | None = None,
    gguf: Path | None = None,
) -> ModelManifest:
    """Builds `model_id` into the store: `write_hf(dir)` writes the checkpoint, then
    the export (`export_as`: its dtype and device), a fused graph per precision
    (from `gguf`'s own blocks where they fit: see `build_graph`; by default the
    GGUF file `write_hf` kept in the model's directory, if it did), `check(scratch)`
    if given, and the manifest; renamed into place at the end."""
    with store.lock(model_id), store.staging(model_id) as scratch:
        hf_dir = scratch / HF_DIR
        write_hf(hf_dir)
        stop_if_cancelled(report.cancel)
        export(hf_dir, scratch / ONNX_DIR, *export_as, report)
        quantization = {}
        blocks = gguf or kept_gguf(scratch)
        for precision in precisions:
            stop_if_cancelled(report.cancel)
            out = scratch / graph_dir(precision)
            quantization[precision] = build_graph(
                hf_dir, out, precision, report, blocks
            )
        stop_if_cancelled(report.cancel)
        if check is not None:
            check(scratch)
        report.say(f"Registering {model_id}")
        context_length, eos_ids = checkpoint_facts(hf_dir)
        manifest = ModelManifest(
            id=model_id,
            source=source,
            context_length=context_length,
            eos_token_ids=eos_ids,
            fused_graphs={p: graph_path(p) for p in precisions},
            quantization=quantization,
            sampling=sampling_defaults(hf_dir),
        )
        manifest.write(scratch)
        stop_if_cancelled(report.cancel)
    return manifest


def kept_gguf(model_dir: Path) -> Path | None:
    """The GGUF file an import kept in a model's directory, if it has one."""
    kept = model_dir / SOURCE_GGUF
    return kept if kept.is_file() else None


def add_graph(
    store: ModelStore,
    model_id: str,
    precision: str,
    report: Reporting = QUIET,
    gguf: Path | None = None,
) -> ModelManifest:
    """Builds a stored model's fused graph of `precision` from its HF weights (and
    `gguf`: see `build_graph`; by default the GGUF file an import kept), replacing
    one it has; hold `store.lock(model_id)`."""
    hf_dir = store.path(model_id) / HF_DIR
    gguf = gguf or kept_gguf(store.path(model_id))
    return store.add_fused_graph(
        model_id,
        precision,
        lambda scratch: build_graph(hf_dir, scratch, precision, report, gguf),
    )
