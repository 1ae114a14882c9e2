"""Served models: lazy loading, prompt rendering, and generation streams."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import metrics
from .config import EngineOptions
from .engine.batcher import BatchScheduler
from .engine.detok import IncrementalDetokenizer
from .engine.fused_model import FusedCausalLM
from .engine.onnx_model import CUDA, OnnxCausalLM, choose_providers
from .engine.sampling import Sampler, SamplingParams
from .engine.scheduler import Scheduler, Sequence
from .engine.stopping import StopSequenceMatcher, TokenStopper
from .engine.types import Delta, Event, Failure, Info, Stop
from .errors import InvalidArgument, NotFound, Unavailable
from .imports import IMPORT_LOCK
from .prepare import add_fast_graph, default_precision
from .store import ModelManifest, ModelStore, canonical_id
from .validation import GenerateParams

log = logging.getLogger(__name__)

FALLBACK = ("fp32", "fp16", "int8", "int4")  # graphs in order of fidelity


@dataclass
class ModelStatus:
    manifest: ModelManifest
    loaded: bool
    provider: str
    running: int
    queued: int
    tokens_generated: int


class LoadedModel:
    """A model in memory: its session, tokenizer and decode loop.

    Models with a fused graph get the continuous-batching engine; others (any
    optimum export) the per-sequence loop.
    """

    def __init__(
        self,
        manifest: ModelManifest,
        directory: Path,
        options: EngineOptions,
        tokenizer: Any,
    ) -> None:
        self.manifest = manifest
        self.tokenizer = tokenizer
        graphs = manifest.fast_graphs
        # The configured precision, else the device's own (fp16 on CUDA), else the
        # closest to the weights the model has.
        preference = (options.precision, default_precision(options.device), *FALLBACK)
        fast = next((graphs[p] for p in preference if p in graphs), None)
        self.scheduler: Scheduler | BatchScheduler
        if fast is not None:
            fused = FusedCausalLM(
                directory / fast,
                options.device,
                options.max_batch,
                options.max_context,
                cache_gb=options.kv_cache_gb,
            )
            self.provider, self.max_len = fused.provider, fused.max_len
            self.graph = fast
            self.scheduler = BatchScheduler(fused, manifest.id, options.max_queued)
        else:
            onnx = OnnxCausalLM(directory / manifest.onnx_path, options.device)
            self.provider = onnx.provider
            self.max_len = min(manifest.context_length, options.max_context or 2**31)
            self.graph = manifest.onnx_path
            self.scheduler = Scheduler(onnx, manifest.id)

    def close(self) -> None:
        self.scheduler.close()


class ModelRegistry:
    """Finds models in the store, loads them on first use, and runs generations."""

    def __init__(self, store: ModelStore, options: EngineOptions) -> None:
        self.store = store
        self.options = options
        self._loaded: dict[str, LoadedModel] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self._tokenizers: dict[str, asyncio.Future[Any]] = {}  # ahead of their model
        self._loading: dict[str, asyncio.Future[LoadedModel]] = {}
        self.unavailable: dict[str, str] = {}  # model id -> why (e.g. still preparing)

    def resolve(self, model_id: str) -> ModelManifest:
        key = canonical_id(model_id)
        if key in self.unavailable:
            raise Unavailable(self.unavailable[key])
        manifest = self.store.get(key)
        if manifest is None:
            available = ", ".join(m.id for m in self.store.list()) or "none"
            raise NotFound(f"unknown model {model_id!r}; available models: {available}")
        return manifest

    def statuses(self) -> list[ModelStatus]:
        expected = self.provider
        result = []
        for manifest in self.store.list():
            loaded = self._loaded.get(manifest.id)
            result.append(
                ModelStatus(
                    manifest=manifest,
                    loaded=loaded is not None,
                    provider=loaded.provider if loaded else expected,
                    running=loaded.scheduler.running if loaded else 0,
                    queued=loaded.scheduler.queued if loaded else 0,
                    tokens_generated=loaded.scheduler.tokens_generated if loaded else 0,
                )
            )
        return result

    async def _tokenizer(self, manifest: ModelManifest) -> Any:
        """The model's tokenizer, loaded once; needed before any chunk is sent.

        The load is a task of its own, shielded: a caller that goes away does not
        waste it, and the next caller waits for the same one.
        """
        if manifest.id in self._loaded:
            return self._loaded[manifest.id].tokenizer
        task = self._tokenizers.get(manifest.id)
        if task is None or (task.done() and task.exception() is not None):
            path = str(self.store.path(manifest.id) / manifest.hf_path)
            task = asyncio.ensure_future(asyncio.to_thread(_load_tokenizer, path))
            self._tokenizers[manifest.id] = task
        return await asyncio.shield(task)

    async def _load(self, manifest: ModelManifest) -> AsyncIterator[Info]:
        """Loads the model unless it is loaded, yielding the progress messages.

        The session is built by a shielded task that registers the model when it
        ends, so a caller cancelled half-way leaves neither a half-loaded model nor
        a second copy for the next caller to build.
        """
        lock = self._locks.setdefault(manifest.id, asyncio.Lock())
        async with lock:
            if manifest.id in self._loaded:
                return
            started = time.monotonic()
            yield Info(f"Loading model {manifest.id}")
            build_graph = self.graph_to_build(manifest)
            if build_graph:
                yield Info(
                    f"Building the fused {self.options.precision} graph of "
                    f"{manifest.id} for {self.provider} (once; minutes for a "
                    "large model)"
                )
            task = self._loading.get(manifest.id)
            if task is None or (task.done() and task.exception() is not None):
                task = asyncio.ensure_future(
                    self._build(manifest, started, build_graph)
                )
                self._loading[manifest.id] = task
            model = await asyncio.shield(task)
            yield Info("Loading tokenizer")
            seconds = time.monotonic() - started
            yield Info(
                f"Model {manifest.id} ready on {model.provider} ({seconds:.1f}s)"
            )

    @property
    def provider(self) -> str:
        """The provider models will be asked to run on."""
        return choose_providers(self.options.device)[0]

    def graph_to_build(self, manifest: ModelManifest) -> bool:
        """True when the model lacks the fused graph for CUDA (fp16) and has the HF
        weights to build it from: a store prepared on a CPU machine, moved to a GPU.
        On CPU every fused graph runs well enough, and any is used."""
        return (
            self.provider == CUDA
            and self.options.precision not in manifest.fast_graphs
            and (self.store.path(manifest.id) / manifest.hf_path).is_dir()
        )

    def _add_graph(self, manifest: ModelManifest) -> ModelManifest:
        with self.store.lock(manifest.id):
            current = self.store.get(manifest.id) or manifest
            if self.options.precision in current.fast_graphs:
                return current  # another process built it meanwhile
            try:
                return add_fast_graph(self.store, manifest.id, self.options.precision)
            except ValueError as exc:  # not a Llama: serve what there is
                log.warning("no fused graph for %s: %s", manifest.id, exc)
                return current

    async def _build(
        self, manifest: ModelManifest, started: float, build_graph: bool
    ) -> LoadedModel:
        if build_graph:
            manifest = await asyncio.to_thread(self._add_graph, manifest)
        directory = self.store.path(manifest.id)
        model = await asyncio.to_thread(
            LoadedModel, manifest, directory, self.options, None
        )
        model.tokenizer = await self._tokenizer(manifest)
        self._loaded[manifest.id] = model
        self._loading.pop(manifest.id, None)
        self._tokenizers.pop(manifest.id, None)
        seconds = time.monotonic() - started
        metrics.MODEL_LOADS.labels(manifest.id).inc()
        metrics.MODEL_LOAD_SECONDS.labels(manifest.id).observe(seconds)
        log.info(
            "model %s (%s) ready on %s in %.1fs",
            manifest.id,
            model.graph,
            model.provider,
            seconds,
        )
        return model

    async def generate(self, params: GenerateParams) -> AsyncIterator[Event]:
        """Streams a generation's events; raises `TigerError` before the first one."""
        received = time.monotonic()
        manifest = self.resolve(params.model)
        # The prompt is rendered and checked before any chunk, so a prompt that does
        # not fit is an error status (HTTP 400), even when the model still has to load.
        tokenizer = await self._tokenizer(manifest)
        prompt_ids = await asyncio.to_thread(render_prompt, tokenizer, params)
        context = min(manifest.context_length, self.options.max_context or 2**31)
        room = room_after(prompt_ids, manifest.id, context, "context length")
        async for info in self._load(manifest):
            yield info
        model = self._loaded[manifest.id]
        # A KV cache budget can make the loaded model's limit shorter.
        room = min(room, room_after(prompt_ids, manifest.id, model.max_len, "KV cache"))
        max_tokens = min(params.max_tokens or self.options.default_max_tokens, room)
        loop = asyncio.get_running_loop()
        events: asyncio.Queue[Event] = asyncio.Queue()
        sequence = Sequence(
            prompt_ids=prompt_ids,
            sampler=Sampler(
                SamplingParams(
                    temperature=params.temperature,
                    top_p=params.top_p,
                    top_k=params.top_k,
                    seed=params.seed,
                )
            ),
            stopper=TokenStopper(manifest.eos_token_ids, max_tokens),
            stop_matcher=StopSequenceMatcher(params.stop_sequences),
            detokenizer=IncrementalDetokenizer(model.tokenizer),
            emit=events.put_nowait,
            loop=loop,
            received_at=received,
        )
        model.scheduler.submit(sequence)
        metrics.PROMPT_TOKENS.labels(manifest.id).inc(len(prompt_ids))
        ttft, itl = (
            h.labels(manifest.id)
            for h in (metrics.TIME_TO_FIRST_TOKEN, metrics.INTER_TOKEN_LATENCY)
        )
        finished = False
        last: float | None = None
        try:
            while not finished:
                event = await events.get()
                finished = isinstance(event, Stop | Failure)
                if isinstance(event, Delta):
                    now = time.monotonic()
                    if last is None:
                        ttft.observe(now - received)
                    else:
                        itl.observe(now - last)
                    last = now
                elif isinstance(event, Stop):
                    metrics.GENERATED_TOKENS.labels(manifest.id).inc(
                        event.usage.output_tokens
                    )
                yield event
        finally:
            if not finished:  # the caller went away: free the compute now
                model.scheduler.cancel(sequence)

    def close(self) -> None:
        for model in self._loaded.values():
            model.close()
        self._loaded.clear()


def room_after(prompt_ids: list[int], model_id: str, limit: int, what: str) -> int:
    """Tokens left for the output once the prompt is in `limit` (the model's `what`);
    a prompt that leaves none is an error."""
    room = limit - len(prompt_ids)
    if room < 1:
        raise InvalidArgument(
            f"the prompt is {len(prompt_ids)} tokens after the chat template; "
            f"{model_id} fits at most {limit - 1} prompt tokens ({what} {limit})"
        )
    return room


def render_prompt(tokenizer: Any, params: GenerateParams) -> list[int]:
    """The prompt's token ids, through the model's own chat template."""
    messages = [{"role": m.role, "content": m.content} for m in params.messages]
    ids = tokenizer.apply_chat_template(
        messages, add_generation_prompt=True, tokenize=True
    )
    return [int(i) for i in ids]


def _load_tokenizer(path: str) -> Any:
    with IMPORT_LOCK:
        from transformers import AutoTokenizer
    return AutoTokenizer.from_pretrained(path)
