"""A model in memory: the runner and scheduler for its best graph, and its tokenizer."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, NamedTuple

from ..config import EngineOptions
from ..engine.chat import load_chat_tokenizer
from ..engine.fused import FusedCausalLM
from ..engine.optimum import OnnxCausalLM
from ..engine.scheduler import BatchScheduler
from ..engine.sequence import Scheduler
from ..engine.serial import SerialScheduler
from ..engine.tokens import TokenTexts, texts_of
from .graph.accuracy import mend_accuracy
from .precision import OPTIMUM_PRECISION, served_precision
from .store import ModelManifest

log = logging.getLogger(__name__)


class Serving(NamedTuple):
    """The graph a model is served from."""

    precision: str
    graph: str  # relative to the model's directory
    quantization: str  # the manifest's record of it ("" for a store without one)
    fused: bool  # a fused graph, else the optimum export


def graph_serving(manifest: ModelManifest, precision: str, provider: str) -> Serving:
    """What serves `manifest` on `provider` with `precision` configured: the fused
    graph `served_precision` picks, else the float32 optimum export."""
    chosen = served_precision(manifest.fused_graphs, precision, provider)
    if chosen is None:
        return Serving(OPTIMUM_PRECISION, manifest.onnx_path, "none", False)
    graph, quantization = manifest.fused_graphs[chosen], manifest.quantization
    return Serving(chosen, graph, quantization.get(chosen, ""), True)


class LoadedModel:
    """A model's session, tokenizer and decode loop.

    Models with a fused graph get the continuous-batching scheduler; others (any
    optimum export) the serial loop.
    """

    def __init__(
        self,
        manifest: ModelManifest,
        directory: Path,
        options: EngineOptions,
        provider: str,
    ) -> None:
        self.manifest = manifest
        self.tokenizer: Any = None
        serving = graph_serving(manifest, options.precision, provider)
        self.graph, self.precision = serving.graph, serving.precision
        self.quantization = serving.quantization
        self.scheduler: Scheduler
        if serving.fused:
            _mend(directory / serving.graph)
            runner = FusedCausalLM(
                directory / serving.graph,
                options.device,
                options.max_batch,
                options.max_context,
                cache_gb=options.kv_cache_gb,
                spin=options.ort_spin,
                attention=options.cuda_attention,
            )
            self.provider, self.max_len = runner.provider, runner.max_len
            self.scheduler = BatchScheduler(
                runner,
                manifest.id,
                options.max_queued,
                prefix_cache=options.prefix_cache,
            )
        else:
            onnx = OnnxCausalLM(
                directory / manifest.onnx_path, options.device, options.ort_spin
            )
            self.provider = onnx.provider
            self.max_len = min(manifest.context_length, options.max_context or 2**31)
            self.scheduler = SerialScheduler(onnx, manifest.id)

    def token_texts(self) -> TokenTexts:
        """Token ids -> text and bytes (log-probabilities; the grammar's vocabulary
        shares them)."""
        return texts_of(self.tokenizer)

    def close(self) -> None:
        self.scheduler.close()


def _mend(graph: Path) -> None:
    """A graph an earlier version built, brought to the current accuracy rules
    (`mend_accuracy`); where the store cannot be written, served as it is."""
    try:
        changed = mend_accuracy(graph)
    except OSError as exc:
        log.warning("%s is served as it was built (%s)", graph, exc)
        return
    if changed:
        log.info("%s: %d projections given the current accuracy levels", graph, changed)


def load_tokenizer(path: str) -> Any:
    """The serving path's tokenizer (no ML stack: see `engine.chat`)."""
    return load_chat_tokenizer(Path(path))
