"""Importing a local Hugging Face Llama checkpoint, or a Llama GGUF file, as a
served model.

The checkpoint's vetted files are copied (never hard-linked) into a scratch
directory of the store (a GGUF file is copied there, vetted again, kept, and
converted into Hugging Face weights by transformers; its int4 graph takes the
file's Q4_0/Q4_1/Q8_0 blocks as they are) and go through the build pipeline:
exported with optimum (fp16 on the GPU for CUDA, fp32 for CPU), given the fused
graph the server serves,
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
from ..models.fromgguf import convert_gguf
from ..models.graph.gguf import EXACT_BLOCKS, SOURCE_BITS
from ..models.pipeline import SOURCE_GGUF, Reporting, build_model
from ..models.precision import GRAPH_TYPES, resolve_precision
from ..models.store import ModelStore, canonical_id
from ..runtime.ml import IMPORT_LOCK
from .checkpoint import Checkpoint, copy_vetted, vet_path
from .gguffile import GgufCheckpoint, copy_gguf, vet_source
from .room import check_room
from .worker import Emit, stream_job

FLOAT_TENSORS = frozenset({"F32", "F16", "BF16"})  # no blocks to keep or to requantize


def export_settings(
    cuda: bool, checkpoint: Checkpoint | GgufCheckpoint
) -> tuple[str, str, str | None]:
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
    if isinstance(checkpoint, GgufCheckpoint):
        parameters: int | None = checkpoint.parameters
    else:  # the safetensors headers, read only here
        parameters = checkpoint_parameters(checkpoint.directory)
    need = 2 * 2 * (parameters or 0)  # fp16, twice
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
    checkpoint: Checkpoint | GgufCheckpoint | None = None,
) -> None:
    """The whole import, on a worker thread: the fused graph is `precision` (the
    device's default if None). A set `cancel` stops it at the next phase or layer
    (the optimum export itself runs to its end), leaving nothing. `checkpoint`:
    `source` already vetted (a directory's copy is vetted again as it is made)."""
    started = time.monotonic()
    checkpoint = checkpoint or vet_source(source)
    cuda = choose_providers(device)[0] == CUDA
    precision = precision or resolve_precision(None, device)
    dtype, export_device, why = export_settings(cuda, checkpoint)
    if why:
        emit(Info(f"{why}: the optimum export runs on the CPU"))

    def write_hf(hf_dir: Path) -> None:
        if isinstance(checkpoint, GgufCheckpoint):
            emit(Info(gguf_plan(checkpoint, precision)))
            copy = copy_gguf(checkpoint, hf_dir.parent / SOURCE_GGUF)
            if copy.sampling:  # the copy's, as vetted: what the model gets
                said = ", ".join(f"{k} {v}" for k, v in copy.sampling.items())
                emit(Info(f"Sampling defaults from the file: {said}"))
            convert_gguf(copy.path, hf_dir, copy.sampling)
        else:
            emit(Info(f"Copying {source} into the model store"))
            copy_vetted(checkpoint, hf_dir)

    say = lambda message: emit(Info(message))  # noqa: E731
    build_model(
        store,
        out_id,
        f"imported from {source}",
        write_hf,
        [precision],
        Reporting(say=say, tick=say, cancel=cancel, engine="CUDA" if cuda else "CPU"),
        export_as=(dtype, export_device),
    )
    emit(Imported(out_id, int((time.monotonic() - started) * 1000)))


def gguf_plan(checkpoint: GgufCheckpoint, precision: str) -> str:
    """What becomes of a GGUF file's blocks, in words."""
    kinds = ", ".join(f"{n} {k}" for k, n in sorted(checkpoint.kinds.items()))
    said = f"Converting {checkpoint.path.name} ({kinds}) to Hugging Face weights"
    exact = sorted(EXACT_BLOCKS & set(checkpoint.kinds))
    others = sorted(set(checkpoint.kinds) - EXACT_BLOCKS - FLOAT_TENSORS)
    graph = f"the {precision} graph"
    if GRAPH_TYPES[precision][0] != SOURCE_BITS:  # the graphs that take the blocks
        return f"{said}; {graph} takes them dequantized"
    if not exact and not others:
        return f"{said}; ONNX Runtime quantizes its float weights for {graph}"
    if not exact:
        return f"{said}; ONNX Runtime quantizes them again for {graph}"
    if not others:
        return f"{said}; {graph} takes its {'/'.join(exact)} blocks as they are"
    return (
        f"{said}; {graph} takes its {'/'.join(exact)} blocks as they are, "
        f"and ONNX Runtime quantizes the rest ({', '.join(others)}) again"
    )


def room_needed(
    checkpoint: Checkpoint | GgufCheckpoint, device: Device
) -> tuple[int, int, bool, str]:
    """What `check_room` judges an import by: (parameters, the source's bytes,
    whether it is a GGUF file, the optimum export's dtype)."""
    cuda = choose_providers(device)[0] == CUDA
    dtype, _, _ = export_settings(cuda, checkpoint)
    if isinstance(checkpoint, GgufCheckpoint):
        size = checkpoint.path.stat().st_size
        return checkpoint.parameters, size, True, dtype
    parameters = checkpoint_parameters(checkpoint.directory) or 0
    files = (checkpoint.directory / name for name in checkpoint.files)
    return parameters, sum(f.stat().st_size for f in files), False, dtype


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
        checkpoint = await asyncio.to_thread(vet_source, source)
        if self._store.get(out_id) is not None or self._store.path(out_id).exists():
            raise AlreadyExistsError(f"a model named {out_id!r} already exists")
        if not self._busy.acquire(blocking=False):
            raise OverloadedError("an import is already running; one runs at a time")
        try:
            await asyncio.to_thread(self._check_room, checkpoint)
        except BaseException:
            self._busy.release()
            raise

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

    def _check_room(self, checkpoint: Checkpoint | GgufCheckpoint) -> None:
        check_room(*room_needed(checkpoint, self._device), self._store.home)
