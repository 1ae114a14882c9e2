"""Served models: found in the store, loaded on first use, and generating.

`generate` is a request's whole path through the server below the servicer: the
model is resolved, the prompt rendered and checked before any chunk (so a prompt
that does not fit is an error status even when the model still has to load), the
model loaded (with `info` chunks), and the engine sequence built and streamed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncGenerator
from typing import Any

from ..api.errors import NotFoundError, UnavailableError
from ..api.events import Delta, Event, Info, Model, Stop
from ..api.params import ChatMessage, GenerateParams
from ..config import DEFAULT_MODEL_ID, EngineOptions
from ..engine.grammar import (
    Constraint,
    grammar_tokenizer,
    needs_grammar,
    request_grammar,
)
from ..engine.prefix import CacheStats
from ..engine.providers import CUDA, choose_providers
from ..engine.request import new_sequences, prompt_ids, room_after
from ..engine.sequence import stream
from ..runtime import metrics
from .loaded import LoadedModel, graph_serving, load_tokenizer
from .pipeline import add_graph
from .precision import runs_on
from .store import ModelManifest, ModelStore, canonical_id

log = logging.getLogger(__name__)


class ModelRegistry:
    """Finds models in the store, loads them on first use, and runs generations."""

    def __init__(self, store: ModelStore, options: EngineOptions) -> None:
        self.store = store
        self.options = options
        self.provider = choose_providers(options.device)[0]  # what models ask for
        self._loaded: dict[str, LoadedModel] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self._tokenizers: dict[str, asyncio.Future[Any]] = {}  # ahead of their model
        # llguidance's view of each model's tokenizer, made on first use.
        self._vocabularies: dict[str, asyncio.Future[Any]] = {}
        self._loading: dict[str, asyncio.Future[LoadedModel]] = {}
        self.unavailable: dict[str, str] = {}  # model id -> why (e.g. still preparing)

    def resolve(self, model_id: str) -> ModelManifest:
        key = canonical_id(model_id)
        if key in self.unavailable:
            raise UnavailableError(self.unavailable[key])
        manifest = self.store.get(key)
        if manifest is None:
            available = ", ".join(m.id for m in self.store.list()) or "none"
            raise NotFoundError(
                f"unknown model {model_id!r}; available models: {available}"
            )
        return manifest

    def default_model(self) -> str:
        """The embedded default model's id, when the store has it."""
        return DEFAULT_MODEL_ID if self.knows(DEFAULT_MODEL_ID) else ""

    def knows(self, model_id: str) -> bool:
        return self.store.get(canonical_id(model_id)) is not None

    def models(self) -> list[Model]:
        """Every stored model, whether it is loaded, and its engine's load."""
        result = []
        for manifest in self.store.list():
            loaded = self._loaded.get(manifest.id)
            scheduler = loaded.scheduler if loaded else None
            precision, quantization = self._serving(manifest, loaded)
            result.append(
                Model(
                    id=manifest.id,
                    loaded=loaded is not None,
                    provider=loaded.provider if loaded else self.provider,
                    context_length=manifest.context_length,
                    source=manifest.source,
                    running=scheduler.running if scheduler else 0,
                    queued=scheduler.queued if scheduler else 0,
                    tokens_generated=scheduler.tokens_generated if scheduler else 0,
                    created=int(manifest.created_at),
                    sampling=manifest.sampling,
                    precision=precision,
                    quantization=quantization,
                )
            )
        return result

    def _serving(
        self, manifest: ModelManifest, loaded: LoadedModel | None
    ) -> tuple[str, str]:
        """The precision of the graph that serves a model (or will, once it loads)
        and how its weights were quantized ("" while it is still to be built)."""
        if loaded is not None:
            return loaded.precision, loaded.quantization
        if self.graph_to_build(manifest):
            return self.options.precision, ""
        serving = graph_serving(manifest, self.options.precision, self.provider)
        return serving.precision, serving.quantization

    def cache_stats(self) -> dict[str, CacheStats]:
        """Each loaded model's prefix cache."""
        loaded = dict(self._loaded)
        return {i: model.scheduler.cache_stats() for i, model in loaded.items()}

    async def generate(self, params: GenerateParams) -> AsyncGenerator[Event]:
        """Streams a generation's events; raises `TigerError` before the first one."""
        received = time.monotonic()
        manifest = self.resolve(params.model)
        tokenizer = await self._tokenizer(manifest)
        prompt = await asyncio.to_thread(prompt_ids, tokenizer, params)
        constraint = None
        if needs_grammar(params):  # a schema that cannot be enforced fails here
            vocabulary = await self._vocabulary(manifest, tokenizer)
            constraint = await asyncio.to_thread(
                lambda: Constraint(vocabulary, request_grammar(vocabulary, params))
            )
        context = min(manifest.context_length, self.options.max_context or 2**31)
        need = 0 if params.max_tokens == 0 else 1  # scoring only: the prompt fits
        room = room_after(prompt, manifest.id, context, "context length", need)
        async for info in self._load(manifest):
            yield info
        model = self._loaded[manifest.id]
        # A KV cache budget can make the loaded model's limit shorter.
        kv_room = room_after(prompt, manifest.id, model.max_len, "KV cache", need)
        room = min(room, kv_room)
        wants_logprobs = params.logprobs or params.prompt_logprobs
        sequences = new_sequences(
            params,
            prompt,
            tokenizer=tokenizer,
            eos_token_ids=manifest.eos_token_ids,
            room=room,
            default_max_tokens=self.options.default_max_tokens,
            texts=await asyncio.to_thread(model.token_texts)
            if wants_logprobs
            else None,
            received_at=received,
            sampling=manifest.sampling,
            constraint=constraint,
        )
        metrics.PROMPT_TOKENS.labels(manifest.id).inc(len(prompt))
        meter = metrics.TOKENS_USED.get()
        if meter is not None:  # what the call uses, for its key's limits
            meter.live = lambda: len(prompt) + sum(len(s.generated) for s in sequences)
        events = _observed(stream(model.scheduler, sequences), manifest.id, received)
        async with contextlib.aclosing(events):
            async for event in events:
                yield event

    async def preload(self, model_id: str) -> None:
        """Loads a model and its tokenizer now, not on its first request (whose
        time to first token would pay for the ML imports and the session)."""
        manifest = self.resolve(model_id)
        tokenizer = await self._tokenizer(manifest)
        async for _ in self._load(manifest):
            pass
        # The chat template compiles on first use.
        hello = (ChatMessage(role="user", content="Hello"),)
        warm = GenerateParams(model=manifest.id, messages=hello)
        await asyncio.to_thread(prompt_ids, tokenizer, warm)
        await self._vocabulary(manifest, tokenizer)  # for the first format

    async def _vocabulary(self, manifest: ModelManifest, tokenizer: Any) -> Any:
        """The model's vocabulary as llguidance needs it, made once (shielded,
        as the tokenizer is)."""
        task = self._vocabularies.get(manifest.id)
        if task is None or (task.done() and task.exception() is not None):
            make = grammar_tokenizer
            eos = manifest.eos_token_ids
            task = asyncio.ensure_future(asyncio.to_thread(make, tokenizer, eos))
            self._vocabularies[manifest.id] = task
        return await asyncio.shield(task)

    async def tokenizer(self, manifest: ModelManifest) -> Any:
        """The model's serving tokenizer (the chat template with it)."""
        return await self._tokenizer(manifest)

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
            task = asyncio.ensure_future(asyncio.to_thread(load_tokenizer, path))
            self._tokenizers[manifest.id] = task
        return await asyncio.shield(task)

    async def _load(self, manifest: ModelManifest) -> AsyncGenerator[Info]:
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

    def graph_to_build(self, manifest: ModelManifest) -> bool:
        """True when the model lacks the fused graph for CUDA (the precision's, fp16
        activations: fp16, int4-fp16 or int8-fp16) and has the HF
        weights to build it from: a store prepared on a CPU machine, moved to a GPU.
        On CPU every fused graph runs well enough, and any is used."""
        return (
            self.provider == CUDA
            and runs_on(self.options.precision, CUDA)
            and self.options.precision not in manifest.fused_graphs
            and (self.store.path(manifest.id) / manifest.hf_path).is_dir()
        )

    def _add_graph(self, manifest: ModelManifest) -> ModelManifest:
        with self.store.lock(manifest.id):
            current = self.store.get(manifest.id) or manifest
            if self.options.precision in current.fused_graphs:
                return current  # another process built it meanwhile
            try:
                return add_graph(self.store, manifest.id, self.options.precision)
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
            LoadedModel, manifest, directory, self.options, self.provider
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

    def close(self) -> None:
        for model in self._loaded.values():
            model.close()
        self._loaded.clear()


async def _observed(
    events: AsyncGenerator[Event], model_id: str, received: float
) -> AsyncGenerator[Event]:
    """Passes a generation's events on, timing its tokens for the metrics."""
    ttft = metrics.TIME_TO_FIRST_TOKEN.labels(model_id)
    itl = metrics.INTER_TOKEN_LATENCY.labels(model_id)
    last: float | None = None
    async with contextlib.aclosing(events):
        async for event in events:
            if isinstance(event, Delta) and event.index == 0:  # one choice's pace
                now = time.monotonic()
                if last is None:
                    ttft.observe(now - received)
                else:
                    itl.observe(now - last)
                last = now
            elif isinstance(event, Stop):
                metrics.GENERATED_TOKENS.labels(model_id).inc(event.usage.output_tokens)
            yield event
