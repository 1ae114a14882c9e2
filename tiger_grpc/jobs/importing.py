"""Importing a local Hugging Face Llama checkpoint as a served model.

The checkpoint's vetted files are copied (never hard-linked) into a scratch
directory of the store and go through the build pipeline: exported with optimum
(fp16 on the GPU for CUDA, fp32 for CPU), given the fused graph the server serves,
and renamed into place, so a failed import leaves nothing behind. Weights over 2 GB
are kept as external data next to each `model.onnx`. Long phases report progress:
the optimum export with a heartbeat, the fused graph layer by layer.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import AsyncGenerator, Callable
from pathlib import Path

from ..api.errors import AlreadyExistsError, OverloadedError
from ..api.events import Imported, ImportEvent, Info
from ..api.params import ImportParams
from ..config import Device
from ..engine.providers import CUDA, choose_providers
from ..models.export import checkpoint_parameters
from ..models.pipeline import Reporting, build_model
from ..models.precision import resolve_precision
from ..models.store import ModelStore, canonical_id
from ..runtime.ml import IMPORT_LOCK
from .checkpoint import Checkpoint, copy_vetted, vet_checkpoint, vet_path
from .worker import Emit, stream_job


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
    checkpoint: Checkpoint | None = None,
) -> None:
    """The whole import, on a worker thread: the fused graph is `precision` (the
    device's default if None). A set `cancel` stops it at the next phase or layer
    (the optimum export itself runs to its end), leaving nothing. `checkpoint`:
    `source` already vetted (its copy is vetted again as it is made)."""
    started = time.monotonic()
    checkpoint = checkpoint or vet_checkpoint(source)
    cuda = choose_providers(device)[0] == CUDA
    precision = precision or resolve_precision(None, device)

    dtype, export_device, why = export_settings(cuda, source)
    if why:
        emit(Info(f"{why}: the optimum export runs on the CPU"))

    def copy(hf_dir: Path) -> None:
        emit(Info(f"Copying {source} into the model store"))
        copy_vetted(checkpoint, hf_dir)

    say = lambda message: emit(Info(message))  # noqa: E731
    build_model(
        store,
        out_id,
        f"imported from {source}",
        copy,
        [precision],
        Reporting(say=say, tick=say, cancel=cancel, engine="CUDA" if cuda else "CPU"),
        export_as=(dtype, export_device),
    )
    emit(Imported(out_id, int((time.monotonic() - started) * 1000)))


class Importer:
    """Runs one import at a time, off the event loop."""

    def __init__(
        self,
        store: ModelStore,
        device: Device,
        precision: str | None = None,
        roots: tuple[Path, ...] = (),
    ) -> None:
        self._roots = roots  # TIGER_IMPORT_ROOTS: where imports may read
        self._store = store
        self._device = device
        self._precision = precision
        self._busy = threading.Lock()

    async def import_model(self, params: ImportParams) -> AsyncGenerator[ImportEvent]:
        """Streams the import's phases; raises `TigerError` before the first one."""
        out_id = canonical_id(params.id)
        source = vet_path(params.path, self._roots)
        checkpoint = await asyncio.to_thread(vet_checkpoint, source)
        if self._store.get(out_id) is not None or self._store.path(out_id).exists():
            raise AlreadyExistsError(f"a model named {out_id!r} already exists")
        if not self._busy.acquire(blocking=False):
            raise OverloadedError("an import is already running; one runs at a time")

        def job(emit: Emit, cancel: threading.Event) -> None:
            run_import(
                source,
                out_id,
                self._store,
                self._device,
                emit,
                cancel,
                self._precision,
                checkpoint,
            )

        # Closed with this generator, so a caller that leaves cancels the job now.
        events = stream_job(job, f"import-{out_id}", self._busy.release)
        async with contextlib.aclosing(events):
            async for event in events:
                yield event
