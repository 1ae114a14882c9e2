"""A Hugging Face checkpoint's facts (context length, end-of-turn ids, size) and
its export to ONNX with optimum (`text-generation-with-past`)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from ..runtime.ml import IMPORT_LOCK, quiet_third_party_warnings

# Tokens that end an assistant turn in the chat templates Tiger knows.
END_OF_TURN_TOKENS = (
    "<|im_end|>",
    "<|eot_id|>",
    "<|end_of_text|>",
    "<|endoftext|>",
    "</s>",
)
# optimum's post-processing (which stores tied embeddings once) loads the whole
# exported graph into one protobuf message, which cannot pass 2 GB; past that size it
# is skipped, and a tied head is stored twice.
POST_PROCESS_MAX_BYTES = 1_800_000_000
DEFAULT_CONTEXT = 2048  # for configs that do not say


def end_of_turn_ids(tokenizer: Any, generation_config: Any) -> list[int]:
    """The ids that end the model's turn: generation_config's eos plus chat markers.

    The tokenizer's own `eos_token` is not trusted: the GGUF conversion reports
    `<|im_start|>` there, which would stop generation before it starts.
    """
    ids: set[int] = set()
    eos = getattr(generation_config, "eos_token_id", None)
    if isinstance(eos, int):
        ids.add(eos)
    elif isinstance(eos, list):
        ids.update(int(i) for i in eos)
    vocab = tokenizer.get_vocab()
    ids.update(vocab[t] for t in END_OF_TURN_TOKENS if t in vocab)
    return sorted(ids)


def checkpoint_facts(hf_dir: Path) -> tuple[int, list[int]]:
    """(context length, end-of-turn ids) of a saved checkpoint."""
    with IMPORT_LOCK:
        from transformers import AutoTokenizer, GenerationConfig

    config = json.loads((hf_dir / "config.json").read_text())
    tokenizer = AutoTokenizer.from_pretrained(hf_dir)
    try:
        generation = GenerationConfig.from_pretrained(hf_dir)
    except OSError:  # no generation_config.json: the model config's eos
        generation = GenerationConfig(eos_token_id=config.get("eos_token_id"))
    context = int(config.get("max_position_embeddings", DEFAULT_CONTEXT))
    return context, end_of_turn_ids(tokenizer, generation)


def _number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


# Each sampling default a model may carry, and the values it may take.
SAMPLING_FIELDS = {
    "temperature": lambda v: _number(v) and 0 <= v <= 100,
    "top_p": lambda v: _number(v) and 0 < v <= 1,
    "top_k": lambda v: _number(v) and isinstance(v, int) and v >= 0,
}


def sampling_defaults(hf_dir: Path) -> dict[str, float]:
    """The sampling settings a checkpoint's generation config sets (temperature,
    top_p, top_k), as vLLM applies them: whatever `do_sample` says, and only those
    present and in range."""
    path = hf_dir / "generation_config.json"
    try:
        config = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return {
        name: config[name]
        for name, ok in SAMPLING_FIELDS.items()
        if name in config and ok(config[name])
    }


def checkpoint_parameters(hf_dir: Path) -> int | None:
    """How many parameters a checkpoint's safetensors hold (headers only), or None
    for other formats."""
    files = sorted(hf_dir.glob("*.safetensors"))
    if not files:
        return None
    with IMPORT_LOCK:
        from safetensors import safe_open

    total = 0
    for file in files:
        with safe_open(file, framework="np") as handle:
            for name in handle.keys():  # noqa: SIM118 - not a dict
                total += math.prod(handle.get_slice(name).get_shape())
    return total


def post_process_fits(hf_dir: Path, dtype: str) -> bool:
    """Whether optimum's post-processing can hold the export of `hf_dir` in `dtype`
    (unknown sizes are taken as too large)."""
    parameters = checkpoint_parameters(hf_dir)
    bytes_per_parameter = 2 if dtype in ("fp16", "bf16") else 4
    return (
        parameters is not None
        and parameters * bytes_per_parameter <= POST_PROCESS_MAX_BYTES
    )


def export_onnx(
    hf_dir: Path, onnx_dir: Path, dtype: str = "fp32", device: str = "cpu"
) -> None:
    """Exports a saved HF causal LM with optimum, with past key values."""
    with IMPORT_LOCK:
        from optimum.exporters.onnx import main_export

    with quiet_third_party_warnings():
        main_export(
            model_name_or_path=str(hf_dir),
            output=onnx_dir,
            task="text-generation-with-past",
            dtype=dtype,
            device=device,
            do_validation=False,
            no_post_process=not post_process_fits(hf_dir, dtype),
        )
