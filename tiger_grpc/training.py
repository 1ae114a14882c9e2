"""Fine-tuning: PyTorch (LoRA through peft, or full), then export and register.

ONNX Runtime's own training packages are deprecated, so training runs in PyTorch on
the model's HF weights; the result is merged, exported with optimum, given a fused
graph, checked against PyTorch on a fixed prompt, and renamed into the model store
atomically. A failed or cancelled run leaves nothing behind.
"""

from __future__ import annotations

import contextlib
import logging
import math
import random
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from . import metrics
from .engine.types import Info, Progress, Trained
from .errors import AlreadyExists, InvalidArgument, ResourceExhausted
from .imports import IMPORT_LOCK
from .models import ModelRegistry
from .prepare import build_fast_graph, export_onnx
from .store import ModelManifest, ModelStore, canonical_id
from .validation import ChatMessage, TrainParams
from .worker import Emit, stop_if_cancelled, stream_job

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


TrainEvent = Info | Progress | Trained


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


def _batches(n: int, batch_size: int, rng: random.Random) -> list[list[int]]:
    order = list(range(n))
    rng.shuffle(order)
    return [order[i : i + batch_size] for i in range(0, n, batch_size)]


def run_training(
    base_dir: Path,
    manifest: ModelManifest,
    params: TrainParams,
    out_id: str,
    staging: Callable[[], Any],
    precision: str,
    emit: Callable[[TrainEvent], None],
    cancel: threading.Event,
) -> None:
    """The whole run, on a worker thread; raises `Cancelled` if `cancel` is set."""
    with IMPORT_LOCK:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

    started = time.monotonic()

    def check() -> None:
        stop_if_cancelled(cancel)

    emit(Info(f"Loading {manifest.id} for training"))
    torch.manual_seed(params.seed)
    rng = random.Random(params.seed)
    tokenizer = AutoTokenizer.from_pretrained(base_dir / manifest.hf_path)
    model = AutoModelForCausalLM.from_pretrained(
        base_dir / manifest.hf_path, dtype=torch.float32
    )
    check()
    emit(Info(f"Tokenizing {len(params.examples)} examples"))
    data = [tokenize_example(tokenizer, example) for example in params.examples]
    if params.method == "lora":
        with IMPORT_LOCK:
            from peft import LoraConfig, get_peft_model

        model = get_peft_model(
            model,
            LoraConfig(
                r=params.lora_rank,
                lora_alpha=2 * params.lora_rank,
                lora_dropout=0.0,
                target_modules=LORA_TARGETS,
                task_type="CAUSAL_LM",
            ),
        )
    model.train()
    trainable = [p for p in model.parameters() if p.requires_grad]
    peak_lr = params.learning_rate or DEFAULT_LR[params.method]
    optimizer = torch.optim.AdamW(trainable, lr=peak_lr, weight_decay=0.0)
    per_epoch = math.ceil(len(data) / params.batch_size)
    total = per_epoch * params.epochs
    if params.max_steps is not None:
        total = min(total, params.max_steps)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    emit(
        Info(
            f"Training {params.method} for {total} steps "
            f"({params.epochs} epochs of {per_epoch}, batch {params.batch_size}, lr {peak_lr:g})"
        )
    )
    step = tokens = 0
    train_started = time.monotonic()
    while step < total:
        for batch in _batches(len(data), params.batch_size, rng):
            if step >= total:
                break
            check()
            width = max(len(data[i][0]) for i in batch)
            ids = torch.full((len(batch), width), pad, dtype=torch.long)
            labels = torch.full((len(batch), width), -100, dtype=torch.long)
            mask = torch.zeros((len(batch), width), dtype=torch.long)
            for row, i in enumerate(batch):
                n = len(data[i][0])
                ids[row, :n] = torch.tensor(data[i][0])
                labels[row, :n] = torch.tensor(data[i][1])
                mask[row, :n] = 1
            lr = peak_lr * (1.0 - 0.9 * step / max(1, total))  # linear decay to 10%
            for group in optimizer.param_groups:
                group["lr"] = lr
            loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
            loss.backward()
            grad_norm = float(torch.nn.utils.clip_grad_norm_(trainable, 1.0))
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            tokens += int(mask.sum())
            elapsed = time.monotonic() - train_started
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
    check()
    if params.method == "lora":
        emit(Info("Merging LoRA weights"))
        model = model.merge_and_unload()
    model.eval()
    with staging() as scratch:
        model.save_pretrained(scratch / "hf")
        tokenizer.save_pretrained(scratch / "hf")
        check()
        emit(Info("Exporting to ONNX with optimum"))
        export_onnx(scratch / "hf", scratch / "onnx")
        check()
        emit(Info(f"Building the fused {precision} graph"))
        build_fast_graph(scratch / "hf", scratch / f"fast-{precision}", precision)
        check()
        emit(Info("Validating ONNX logits against PyTorch"))
        _validate(scratch / "onnx" / "model.onnx", model, tokenizer)
        emit(Info(f"Registering {out_id}"))
        ModelManifest(
            id=out_id,
            source=f"trained from {manifest.id} ({params.method}, {step} steps)",
            context_length=manifest.context_length,
            eos_token_ids=manifest.eos_token_ids,
            fast_graphs={precision: f"fast-{precision}/model.onnx"},
        ).write(scratch)
        check()
    emit(Trained(out_id, int((time.monotonic() - started) * 1000), tokens, step))


def _validate(onnx_path: Path, model: Any, tokenizer: Any) -> None:
    import torch

    from .config import Device
    from .engine.onnx_model import OnnxCausalLM

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

    async def train(self, params: TrainParams) -> AsyncIterator[TrainEvent]:
        """Streams a training's events; raises `TigerError` before the first one."""
        store = self._registry.store
        base = self._registry.resolve(params.model)
        out_id = canonical_id(params.output_model)
        if store.get(out_id) is not None or store.path(out_id).exists():
            raise AlreadyExists(
                f"a model named {out_id!r} already exists; choose another "
                "`output_model`"
            )
        if out_id == base.id:
            raise InvalidArgument("`output_model` must differ from `model`")
        if self._busy:
            raise ResourceExhausted("a training is already running; one runs at a time")
        self._busy = True
        metrics.TRAININGS_RUNNING.inc()

        def job(emit: Emit, cancel: threading.Event) -> None:
            run_training(
                store.path(base.id),
                base,
                params,
                out_id,
                lambda: _locked_staging(store, out_id),
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


@contextlib.contextmanager
def _locked_staging(store: ModelStore, out_id: str) -> Iterator[Path]:
    with store.lock(out_id), store.staging(out_id) as scratch:
        yield scratch
