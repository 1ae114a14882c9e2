"""Importing a local Hugging Face Llama checkpoint as a served model.

The checkpoint is copied (hard-linked where the file system allows) into a scratch
directory of the store, exported with optimum (fp16 on the GPU for CUDA, fp32 for
CPU), given the fused graph the batched engine serves (fp16 for CUDA, int4 for
CPU), and renamed into place: a failed import leaves nothing behind. Weights over
2 GB are kept as external data next to each `model.onnx`. Long phases report
progress: the fused graph layer by layer, the optimum export with a heartbeat.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

from .config import Device
from .engine.onnx_model import CUDA, choose_providers
from .engine.types import Imported, Info
from .errors import AlreadyExists, InvalidArgument, NotFound, ResourceExhausted
from .imports import IMPORT_LOCK
from .prepare import (
    build_fast_graph,
    checkpoint_parameters,
    default_precision,
    end_of_turn_ids,
    export_onnx,
)
from .store import ModelManifest, ModelStore, canonical_id
from .validation import MODEL_ID_PATTERN
from .worker import Emit, stop_if_cancelled, stream_job

ImportEvent = Info | Imported
HEARTBEAT_S = 15.0


def check_checkpoint(path: Path) -> dict:
    """The checkpoint's config.json, once it is known to be a Llama with a tokenizer."""
    if not path.is_absolute():
        raise InvalidArgument(
            f"`path` must be absolute (the server reads it), got {str(path)!r}"
        )
    if not (path / "config.json").is_file():
        raise NotFound(f"no Hugging Face checkpoint at {path}: no config.json there")
    config = json.loads((path / "config.json").read_text())
    if config.get("model_type") != "llama":
        raise InvalidArgument(
            f"only Llama-architecture checkpoints can be imported, {path} is "
            f"{config.get('model_type')!r}"
        )
    if not any(
        (path / name).is_file() for name in ("tokenizer.json", "tokenizer.model")
    ):
        raise InvalidArgument(
            f"{path} has no tokenizer (tokenizer.json or tokenizer.model)"
        )
    if not list(path.glob("*.safetensors")) and not list(path.glob("*.bin")):
        raise InvalidArgument(f"{path} has no weights (*.safetensors)")
    return config


def _link_or_copy(src: str, dst: str) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


@contextlib.contextmanager
def heartbeat(
    emit: Callable[[ImportEvent], None], what: str, every_s: float = HEARTBEAT_S
) -> Iterator[None]:
    """Says `what` now, then how long it has been running every `every_s` seconds."""
    emit(Info(what))
    started = time.monotonic()
    done = threading.Event()

    def beat() -> None:
        while not done.wait(every_s):
            emit(Info(f"{what}: {time.monotonic() - started:.0f}s so far"))

    thread = threading.Thread(target=beat, daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()
        thread.join()


def layer_progress(
    emit: Callable[[ImportEvent], None],
    what: str,
    cancel: threading.Event,
    every_s: float = HEARTBEAT_S,
) -> Callable[[int, int], None]:
    """A `progress(done, total)` that reports at most every `every_s` (and at the
    end), and stops the build when `cancel` is set."""
    last = time.monotonic()

    def progress(done: int, total: int) -> None:
        nonlocal last
        stop_if_cancelled(cancel)
        if done == total or time.monotonic() - last >= every_s:
            last = time.monotonic()
            emit(Info(f"{what}: layer {done}/{total}"))

    return progress


def export_settings(cuda: bool, hf_dir: Path) -> tuple[str, str, str | None]:
    """(dtype, device, why not the GPU) of the optimum export: fp16 on the GPU for
    CUDA when PyTorch can use it and the GPU has room for the model twice over
    (optimum exports fp16 only there; models being served hold GPU memory too), fp32
    on the CPU otherwise."""
    if not cuda:
        return "fp32", "cpu", None
    with IMPORT_LOCK:
        import torch
    if not torch.cuda.is_available():
        return "fp32", "cpu", "PyTorch here has no CUDA"
    free, _ = torch.cuda.mem_get_info()
    need = 2 * 2 * (checkpoint_parameters(hf_dir) or 0)  # fp16, twice
    if free < need:
        return "fp32", "cpu", f"the GPU has {free / 2**30:.1f} GiB free"
    return "fp16", "cuda", None


def run_import(
    source: Path,
    out_id: str,
    store: ModelStore,
    device: Device,
    emit: Callable[[ImportEvent], None],
    cancel: threading.Event | None = None,
    precision: str | None = None,
) -> None:
    """The whole import, on a worker thread: the fused graph is `precision` (the
    device's default if None). A set `cancel` stops it at the next phase or layer
    (the optimum export itself runs to its end), leaving nothing."""
    cancel = cancel or threading.Event()
    with IMPORT_LOCK:
        from transformers import AutoTokenizer, GenerationConfig

    started = time.monotonic()
    config = check_checkpoint(source)
    cuda = choose_providers(device)[0] == CUDA
    precision = precision or default_precision(device)
    with store.lock(out_id), store.staging(out_id) as scratch:
        emit(Info(f"Copying {source} into the model store"))
        shutil.copytree(source, scratch / "hf", copy_function=_link_or_copy)
        stop_if_cancelled(cancel)
        tokenizer = AutoTokenizer.from_pretrained(scratch / "hf")
        try:
            generation = GenerationConfig.from_pretrained(scratch / "hf")
        except OSError:
            generation = GenerationConfig(eos_token_id=config.get("eos_token_id"))
        dtype, export_device, why = export_settings(cuda, scratch / "hf")
        if why:
            emit(Info(f"{why}: the optimum export runs on the CPU"))
        what = f"Exporting to ONNX with optimum ({dtype} on {export_device.upper()})"
        with heartbeat(emit, what):
            try:
                export_onnx(
                    scratch / "hf", scratch / "onnx", dtype=dtype, device=export_device
                )
            finally:
                if export_device == "cuda":  # give the export's memory back
                    import torch

                    torch.cuda.empty_cache()
        stop_if_cancelled(cancel)
        what = f"Building the fused {precision} graph for the {'CUDA' if cuda else 'CPU'} engine"
        emit(Info(what))
        build_fast_graph(
            scratch / "hf",
            scratch / f"fast-{precision}",
            precision,
            layer_progress(emit, what, cancel),
        )
        graphs = {precision: f"fast-{precision}/model.onnx"}
        emit(Info(f"Registering {out_id}"))
        ModelManifest(
            id=out_id,
            source=f"imported from {source}",
            context_length=int(config.get("max_position_embeddings", 2048)),
            eos_token_ids=end_of_turn_ids(tokenizer, generation),
            fast_graphs=graphs,
        ).write(scratch)
    emit(Imported(out_id, int((time.monotonic() - started) * 1000)))


class Importer:
    """Runs one import at a time, off the event loop."""

    def __init__(
        self, store: ModelStore, device: Device, precision: str | None = None
    ) -> None:
        self._store = store
        self._device = device
        self._precision = precision
        self._busy = threading.Lock()

    async def import_model(
        self, path: str, model_id: str
    ) -> AsyncIterator[ImportEvent]:
        out_id = canonical_id(model_id)
        if not MODEL_ID_PATTERN.fullmatch(out_id):
            raise InvalidArgument(
                "`id` must be 1 to 128 characters of letters, digits, '.', "
                f"'_' or '-', starting with a letter or digit, got {model_id!r}"
            )
        source = Path(path)
        check_checkpoint(source)
        if self._store.get(out_id) is not None or self._store.path(out_id).exists():
            raise AlreadyExists(f"a model named {out_id!r} already exists")
        if not self._busy.acquire(blocking=False):
            raise ResourceExhausted("an import is already running; one runs at a time")

        def job(emit: Emit, cancel: threading.Event) -> None:
            run_import(
                source,
                out_id,
                self._store,
                self._device,
                emit,
                cancel,
                self._precision,
            )

        # Closed with this generator, so a caller that leaves cancels the job now.
        events = stream_job(job, f"import-{out_id}", self._busy.release)
        async with contextlib.aclosing(events):
            async for event in events:
                yield event


__all__ = ["Importer", "check_checkpoint", "run_import"]
