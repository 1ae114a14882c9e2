"""Fine-tuning: PyTorch (LoRA through peft, or full), then the build pipeline.

ONNX Runtime's own training packages are deprecated, so training runs in PyTorch on
the model's HF weights; the result is merged and goes through the same pipeline as
every model (optimum export, fused graph), with its ONNX logits checked against
PyTorch on a fixed prompt before it is renamed into the store. A failed or
cancelled run leaves nothing behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import random
import threading
import time
from collections.abc import AsyncGenerator
from pathlib import Path
from typing import Any

import numpy as np

from ..api.errors import AlreadyExistsError, InvalidArgumentError, OverloadedError
from ..api.events import Info, Progress, Trained, TrainEvent
from ..api.params import ChatMessage, TrainParams
from ..models.pipeline import Reporting, build_model
from ..models.registry import ModelRegistry
from ..models.store import ModelManifest, ModelStore, canonical_id
from ..runtime import metrics
from ..runtime.ml import IMPORT_LOCK, stop_if_cancelled
from .worker import Emit, stream_job

log = logging.getLogger(__name__)

LORA_TARGETS = [
    "q_proj",
    "k_proj",
    "v_proj",
    "o_proj",
    "gate_proj",
    "up_proj",
    "down_proj",
]
DEFAULT_LR = {"lora": 2e-4, "full": 2e-5}
MAX_EXAMPLE_TOKENS = 2048
CHECK_PROMPT = "The quick brown fox"
CHECK_TOLERANCE = 1e-2  # max |ONNX - PyTorch| over the fixed prompt's logits


def tokenize_example(
    tokenizer: Any, messages: tuple[ChatMessage, ...]
) -> tuple[list[int], list[int]]:
    """Token ids and labels; labels are -100 except on the assistant turns.

    Each assistant turn is the part of the rendered conversation through that turn
    that the rendering up to its generation prompt does not already contain.
    """
    rendered = [{"role": m.role, "content": m.content} for m in messages]
    full = [int(t) for t in tokenizer.apply_chat_template(rendered, tokenize=True)]
    labels = [-100] * len(full)
    for i, message in enumerate(rendered):
        if message["role"] != "assistant":
            continue
        before = (
            tokenizer.apply_chat_template(
                rendered[:i], add_generation_prompt=True, tokenize=True
            )
            if i
            else []
        )
        through = tokenizer.apply_chat_template(rendered[: i + 1], tokenize=True)
        start = 0
        while (
            start < min(len(before), len(through)) and before[start] == through[start]
        ):
            start += 1
        for position in range(start, min(len(through), len(full))):
            labels[position] = full[position]
    return full[:MAX_EXAMPLE_TOKENS], labels[:MAX_EXAMPLE_TOKENS]


def check_lengths(tokenizer: Any, params: TrainParams) -> None:
    """Refuses (before anything runs) an example longer than a training takes."""
    for i, example in enumerate(params.examples):
        turns = [{"role": m.role, "content": m.content} for m in example.messages]
        size = len(tokenizer.apply_chat_template(turns, tokenize=True))
        if size > MAX_EXAMPLE_TOKENS:
            raise InvalidArgumentError(
                f"`examples[{i}]` is {size} tokens after the chat template; a "
                f"training takes at most {MAX_EXAMPLE_TOKENS} per example"
            )


def _batches(n: int, batch_size: int, rng: random.Random) -> list[list[int]]:
    order = list(range(n))
    rng.shuffle(order)
    return [order[i : i + batch_size] for i in range(0, n, batch_size)]


def _collate(
    data: list[tuple[list[int], list[int]]], batch: list[int], pad: int
) -> Any:
    """Token ids, labels and the attention mask of a batch, right-padded."""
    import torch

    width = max(len(data[i][0]) for i in batch)
    ids = torch.full((len(batch), width), pad, dtype=torch.long)
    labels = torch.full((len(batch), width), -100, dtype=torch.long)
    mask = torch.zeros((len(batch), width), dtype=torch.long)
    for row, i in enumerate(batch):
        n = len(data[i][0])
        ids[row, :n] = torch.tensor(data[i][0])
        labels[row, :n] = torch.tensor(data[i][1])
        mask[row, :n] = 1
    return ids, labels, mask


def _prepare(hf_dir: Path, params: TrainParams, emit: Emit) -> tuple[Any, Any, list]:
    """The tokenizer, the model to train (wrapped for LoRA) and the examples."""
    with IMPORT_LOCK:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

    hyper = params.hyperparameters
    torch.manual_seed(hyper.seed)
    tokenizer = AutoTokenizer.from_pretrained(hf_dir)
    model = AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32)
    emit(Info(f"Tokenizing {len(params.examples)} examples"))
    data = [tokenize_example(tokenizer, e.messages) for e in params.examples]
    if hyper.method == "lora":
        with IMPORT_LOCK:
            from peft import LoraConfig, get_peft_model

        model = get_peft_model(
            model,
            LoraConfig(
                r=hyper.lora_rank,
                lora_alpha=2 * hyper.lora_rank,
                lora_dropout=0.0,
                target_modules=LORA_TARGETS,
                task_type="CAUSAL_LM",
            ),
        )
    return tokenizer, model, data


def _train(
    model: Any,
    data: list,
    pad: int,
    params: TrainParams,
    emit: Emit,
    cancel: threading.Event,
) -> tuple[int, int]:
    """The optimizer loop; returns (steps, tokens trained on)."""
    import torch

    hyper = params.hyperparameters
    model.train()
    trainable = [p for p in model.parameters() if p.requires_grad]
    peak_lr = hyper.learning_rate or DEFAULT_LR[hyper.method]
    optimizer = torch.optim.AdamW(trainable, lr=peak_lr, weight_decay=0.0)
    per_epoch = math.ceil(len(data) / hyper.batch_size)
    total = min(per_epoch * hyper.epochs, hyper.max_steps or 2**62)
    emit(
        Info(
            f"Training {hyper.method} for {total} steps ({hyper.epochs} epochs of "
            f"{per_epoch}, batch {hyper.batch_size}, lr {peak_lr:g})"
        )
    )
    rng = random.Random(hyper.seed)
    step = tokens = 0
    started = time.monotonic()
    while step < total:
        for batch in _batches(len(data), hyper.batch_size, rng)[: total - step]:
            stop_if_cancelled(cancel)
            ids, labels, mask = _collate(data, batch, pad)
            lr = peak_lr * (1.0 - 0.9 * step / max(1, total))  # linear decay to 10%
            for group in optimizer.param_groups:
                group["lr"] = lr
            loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
            loss.backward()
            grad_norm = float(torch.nn.utils.clip_grad_norm_(trainable, 1.0))
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            step, tokens = step + 1, tokens + int(mask.sum())
            elapsed = time.monotonic() - started
            emit(
                Progress(
                    step=step,
                    total_steps=total,
                    epoch=step / per_epoch,
                    loss=float(loss),
                    learning_rate=lr,
                    grad_norm=grad_norm,
                    tokens_per_second=tokens / max(elapsed, 1e-9),
                    elapsed_ms=int(elapsed * 1000),
                    eta_ms=int(elapsed / step * (total - step) * 1000),
                )
            )
    return step, tokens


def run_training(
    store: ModelStore,
    base: ModelManifest,
    params: TrainParams,
    out_id: str,
    precision: str,
    emit: Emit,
    cancel: threading.Event,
) -> None:
    """The whole run, on a worker thread; raises `Cancelled` if `cancel` is set."""
    started = time.monotonic()
    emit(Info(f"Loading {base.id} for training"))
    tokenizer, model, data = _prepare(store.path(base.id) / base.hf_path, params, emit)
    stop_if_cancelled(cancel)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    steps, tokens = _train(model, data, pad, params, emit, cancel)
    stop_if_cancelled(cancel)
    method = params.hyperparameters.method
    if method == "lora":
        emit(Info("Merging LoRA weights"))
        model = model.merge_and_unload()
    model.eval()

    def write_hf(hf_dir: Path) -> None:
        model.save_pretrained(hf_dir)
        tokenizer.save_pretrained(hf_dir)

    def check(scratch: Path) -> None:
        emit(Info("Validating ONNX logits against PyTorch"))
        _validate(scratch / ModelManifest.onnx_path, model, tokenizer)

    say = lambda message: emit(Info(message))  # noqa: E731
    build_model(
        store,
        out_id,
        f"trained from {base.id} ({method}, {steps} steps)",
        write_hf,
        [precision],
        Reporting(say=say, tick=say, cancel=cancel),
        check=check,
    )
    emit(Trained(out_id, int((time.monotonic() - started) * 1000), tokens, steps))


def _validate(onnx_path: Path, model: Any, tokenizer: Any) -> None:
    import torch

    from ..config import Device
    from ..engine.optimum import OnnxCausalLM

    ids = tokenizer(CHECK_PROMPT)["input_ids"]
    onnx = OnnxCausalLM(onnx_path, Device.CPU)
    got, _ = onnx.forward(ids, onnx.empty_cache())
    with torch.no_grad():
        want = model(torch.tensor([ids])).logits[0, -1].numpy()
    diff = float(np.abs(got - want).max())
    log.info("exported logits differ from PyTorch by at most %.2e", diff)
    if not diff <= CHECK_TOLERANCE:
        raise RuntimeError(
            f"exported model disagrees with PyTorch (max |diff| {diff:.3g})"
        )


class Trainer:
    """Runs one training at a time, off the event loop."""

    def __init__(self, registry: ModelRegistry) -> None:
        self._registry = registry
        self._busy = False

    @property
    def busy(self) -> bool:
        return self._busy

    async def train(self, params: TrainParams) -> AsyncGenerator[TrainEvent]:
        """Streams a training's events; raises `TigerError` before the first one."""
        store = self._registry.store
        base = self._registry.resolve(params.model)
        out_id = canonical_id(params.output_model)
        if store.get(out_id) is not None or store.path(out_id).exists():
            raise AlreadyExistsError(
                f"a model named {out_id!r} already exists; choose another "
                "`output_model`"
            )
        if out_id == base.id:
            raise InvalidArgumentError("`output_model` must differ from `model`")
        if self._busy:
            raise OverloadedError("a training is already running; one runs at a time")
        tokenizer = await self._registry.tokenizer(base)
        await asyncio.to_thread(check_lengths, tokenizer, params)
        self._busy = True
        metrics.TRAININGS_RUNNING.inc()

        def job(emit: Emit, cancel: threading.Event) -> None:
            run_training(
                store,
                base,
                params,
                out_id,
                self._registry.options.precision,
                emit,
                cancel,
            )

        def done() -> None:
            self._busy = False
            metrics.TRAININGS_RUNNING.dec()

        # Closed with this generator, so a caller that leaves cancels the job now.
        events = stream_job(job, f"train-{out_id}", done)
        async with contextlib.aclosing(events):
            async for event in events:
                if isinstance(event, Progress):
                    metrics.TRAIN_STEPS.inc()
                yield event
