"""The model store: one directory per model, written atomically.

Layout under `<home>/models/<id>/`: `model.json` (the manifest, written last),
`hf/` (the weights, tokenizer and chat template), `onnx/` (optimum's export: the
fp32 reference, and what serves a model without a fused graph) and one
`fused-<precision>/` per fused graph the engine serves. A model is visible only
once its directory has been renamed into place, so a preparation killed half-way
leaves nothing that looks like a model.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import json
import logging
import os
import shutil
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO

from .precision import graph_dir, graph_path

log = logging.getLogger(__name__)


@dataclass
class _Held:
    """This process's hold on one inter-process lock: threads queue on `rlock`, the
    first holder takes the file lock, the last one out releases it."""

    rlock: threading.RLock
    depth: int = 0  # how deep the holding thread is
    users: int = 0  # threads holding or waiting
    handle: IO[str] | None = None


def _locked_file(path: Path) -> IO[str]:
    handle = open(path, "w")  # noqa: SIM115 - closed by the lock's last exit
    try:
        fcntl.flock(handle, fcntl.LOCK_EX)
    except BaseException:
        handle.close()
        raise
    return handle


_LOCKS: dict[Path, _Held] = {}
_LOCKS_GUARD = threading.Lock()

MANIFEST = "model.json"
HF_DIR = "hf"  # the checkpoint: weights, tokenizer, chat template
ONNX_DIR = "onnx"  # optimum's export
_STAGING_PREFIX = ".staging-"


def canonical_id(model_id: str) -> str:
    """Model ids are case-insensitive; the store keeps them in lower case."""
    return model_id.strip().lower()


@dataclass(frozen=True)
class ModelManifest:
    """What the server needs to know about a stored model."""

    id: str
    source: str
    context_length: int
    eos_token_ids: list[int]
    onnx_path: str = f"{ONNX_DIR}/model.onnx"
    hf_path: str = HF_DIR
    # Fused graphs for the batched engine, by precision ("int4", "fp16", ...).
    fused_graphs: dict[str, str] = field(default_factory=dict)
    # How each fused graph's weights were quantized ("source blocks": a GGUF
    # file's own; "ORT blockwise int4": ORT's quantizer; "none"; with
    # "; int8 KV cache" after it for a graph whose cache is int8). Stores written
    # before it was recorded have none.
    quantization: dict[str, str] = field(default_factory=dict)
    # Sampling for requests that leave it unset: `temperature`, `top_p`, `top_k`
    # (from the checkpoint's generation config, or the model card's advice).
    sampling: dict[str, float] = field(default_factory=dict)
    created_at: float = field(default_factory=time.time)

    @classmethod
    def read(cls, directory: Path) -> ModelManifest:
        data = json.loads((directory / MANIFEST).read_text())
        if "fast_graphs" in data:  # stores written before the graphs were renamed
            data.setdefault("fused_graphs", data.pop("fast_graphs"))
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        return cls(**known)

    def write(self, directory: Path) -> None:
        tmp = directory / (MANIFEST + ".tmp")
        tmp.write_text(json.dumps(asdict(self), indent=2) + "\n")
        os.replace(tmp, directory / MANIFEST)


class ModelStore:
    """Models on disk under `home`; safe to share between processes."""

    def __init__(self, home: Path) -> None:
        self.home = home
        self.models_dir = home / "models"
        self.models_dir.mkdir(parents=True, exist_ok=True)

    def path(self, model_id: str) -> Path:
        return self.models_dir / canonical_id(model_id)

    def get(self, model_id: str) -> ModelManifest | None:
        directory = self.path(model_id)
        if not (directory / MANIFEST).is_file():
            return None
        try:
            return ModelManifest.read(directory)
        except (OSError, ValueError, TypeError) as exc:
            log.warning("ignoring model %s: unreadable manifest (%s)", model_id, exc)
            return None

    def add_fused_graph(
        self, model_id: str, precision: str, build: Callable[[Path], str]
    ) -> ModelManifest:
        """Adds (or replaces) a fused graph of a stored model, atomically; hold
        `lock(model_id)`.

        `build(scratch)` writes `model.onnx` into `scratch` and says how it was
        quantized; `scratch` then takes the place of the graph's directory (an old
        one is removed only after) before the manifest (rewritten atomically)
        points at it. A failed build leaves the model as it was.
        """
        directory = self.path(model_id)
        manifest = ModelManifest.read(directory)
        final = directory / graph_dir(precision)
        scratch = directory / f"{_STAGING_PREFIX}{final.name}"
        old = directory / f"{_STAGING_PREFIX}{final.name}.old"
        for leftover in (scratch, old):
            shutil.rmtree(leftover, ignore_errors=True)
        try:
            scratch.mkdir()
            quantization = build(scratch)
            if final.exists():
                os.rename(final, old)
            os.rename(scratch, final)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
            shutil.rmtree(old, ignore_errors=True)
        updated = dataclasses.replace(
            manifest,
            fused_graphs={**manifest.fused_graphs, precision: graph_path(precision)},
            quantization={**manifest.quantization, precision: quantization},
        )
        updated.write(directory)
        return updated

    def list(self) -> list[ModelManifest]:
        manifests = []
        for entry in sorted(self.models_dir.iterdir()):
            if entry.name.startswith("."):
                continue
            manifest = self.get(entry.name)
            if manifest is not None:
                manifests.append(manifest)
        return manifests

    @contextlib.contextmanager
    def lock(self, name: str) -> Iterator[None]:
        """An exclusive inter-process lock, e.g. while one process prepares a model;
        re-entrant within a thread (a build inside a preparation takes it again).
        Take it on worker threads: it blocks until the holder lets go."""
        path = self._lock_path(name).resolve()
        with _LOCKS_GUARD:
            held = _LOCKS.setdefault(path, _Held(threading.RLock()))
            held.users += 1
        try:
            with held.rlock:
                if held.depth == 0:
                    held.handle = _locked_file(path)
                held.depth += 1
                try:
                    yield
                finally:
                    held.depth -= 1
                    if held.depth == 0 and held.handle is not None:
                        fcntl.flock(held.handle, fcntl.LOCK_UN)
                        held.handle.close()
                        held.handle = None
        finally:
            with _LOCKS_GUARD:
                held.users -= 1
                if held.users == 0:
                    del _LOCKS[path]

    def _lock_path(self, name: str) -> Path:
        return self.models_dir / f".{canonical_id(name)}.lock"

    def _remove_unfinished(self, model_id: str) -> None:
        """Leftovers of earlier killed preparations of `model_id` (hold its lock)."""
        for stale in self.models_dir.glob(f"{_STAGING_PREFIX}{model_id}-*"):
            log.info("removing unfinished preparation %s", stale.name)
            shutil.rmtree(stale, ignore_errors=True)

    def remove(self, model_id: str) -> None:
        """A model gone from the store: its directory, any unfinished preparation of
        it and its lock file (for a model nothing else uses: a check's own)."""
        model_id = canonical_id(model_id)
        with self.lock(model_id):
            shutil.rmtree(self.path(model_id), ignore_errors=True)
            self._remove_unfinished(model_id)
        self._lock_path(model_id).unlink(missing_ok=True)

    @contextlib.contextmanager
    def staging(self, model_id: str) -> Iterator[Path]:
        """A scratch directory that becomes `<id>/` only if the block succeeds.

        Call it with `lock(model_id)` held: leftovers of earlier killed attempts at
        the same id are removed first.
        """
        model_id = canonical_id(model_id)
        self._remove_unfinished(model_id)
        scratch = (
            self.models_dir / f"{_STAGING_PREFIX}{model_id}-{uuid.uuid4().hex[:8]}"
        )
        scratch.mkdir()
        try:
            yield scratch
            if not (scratch / MANIFEST).is_file():
                raise RuntimeError(f"preparation of {model_id} wrote no {MANIFEST}")
            os.rename(scratch, self.path(model_id))
        finally:
            if scratch.exists():
                shutil.rmtree(scratch, ignore_errors=True)
