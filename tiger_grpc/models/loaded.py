"""A model in memory: the runner and scheduler for its best graph, and its tokenizer."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..config import EngineOptions
from ..engine.chat import load_chat_tokenizer
from ..engine.fused import FusedCausalLM
from ..engine.optimum import OnnxCausalLM
from ..engine.scheduler import BatchScheduler
from ..engine.sequence import Scheduler
from ..engine.serial import SerialScheduler
from ..engine.tokens import TokenTexts, texts_of
from .precision import FIDELITY, default_precision, runs_on
from .store import ModelManifest


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
        graphs = manifest.fused_graphs
        # The configured precision, else the device's own (fp16 on CUDA), else the
        # closest to the weights the model has, of those that serve on `provider`.
        preference = (options.precision, default_precision(provider), *FIDELITY)
        fused = next(
            (graphs[p] for p in preference if p in graphs and runs_on(p, provider)),
            None,
        )
        self.scheduler: Scheduler
        if fused is not None:
            runner = FusedCausalLM(
                directory / fused,
                options.device,
                options.max_batch,
                options.max_context,
                cache_gb=options.kv_cache_gb,
                spin=options.ort_spin,
                attention=options.cuda_attention,
            )
            self.provider, self.max_len = runner.provider, runner.max_len
            self.graph = fused
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
            self.graph = manifest.onnx_path
            self.scheduler = SerialScheduler(onnx, manifest.id)

    def token_texts(self) -> TokenTexts:
        """Token ids -> text and bytes (log-probabilities; the grammar's vocabulary
        shares them)."""
        return texts_of(self.tokenizer)

    def close(self) -> None:
        self.scheduler.close()


def load_tokenizer(path: str) -> Any:
    """The serving path's tokenizer (no ML stack: see `engine.chat`)."""
    return load_chat_tokenizer(Path(path))
