"""What a GGUF import may read, judged before anything else reads the file.

The header is read with every count and length bounded (`models.fromgguf`, never
gguf's own reader, which trusts them). Then the file must be a Llama of sane sizes
with its tokenizer inside and token ids within it, every layer's tensors present
with the shapes its metadata implies and nothing else, each tensor's bytes within
the file and overlapping no other. The import then works from a copy of the file in
the store, vetted again (the user's file may change after it was vetted).
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..api.errors import InvalidArgumentError
from ..models.fromgguf import Array, file_sampling, read_header
from .checkpoint import Checkpoint, check_config, copy_file, vet_checkpoint


@dataclass(frozen=True)
class GgufCheckpoint:
    path: Path
    config: dict[str, Any]  # its sizes, named as a Hugging Face config names them
    kinds: dict[str, int]  # how many tensors of each block type it holds
    parameters: int
    sampling: dict[str, float] = field(default_factory=dict)  # what it recommends


# The GGUF metadata a Llama's sizes come from, by Hugging Face config name.
GGUF_SIZES = {
    "hidden_size": "llama.embedding_length",
    "intermediate_size": "llama.feed_forward_length",
    "num_hidden_layers": "llama.block_count",
    "num_attention_heads": "llama.attention.head_count",
    "num_key_value_heads": "llama.attention.head_count_kv",
    "max_position_embeddings": "llama.context_length",
}
TOKEN_IDS = ("bos", "eos", "padding", "unknown")


def vet_gguf(path: Path) -> GgufCheckpoint:
    """A Llama GGUF file whose header, sizes, tokenizer and tensors all hold."""
    meta, tensors = read_header(path)
    tokens = meta.get("tokenizer.ggml.tokens")
    config: dict[str, Any] = {
        "model_type": meta.get("general.architecture"),
        "vocab_size": tokens.count if isinstance(tokens, Array) else None,
    }
    config.update({name: meta.get(key) for name, key in GGUF_SIZES.items()})
    if config["model_type"] == "llama" and not meta.get("tokenizer.ggml.model"):
        raise InvalidArgumentError(f"{path.name} carries no tokenizer")
    check_config(config, f"{path.name}'s metadata")  # integers from here on
    hidden, heads = int(config["hidden_size"]), int(config["num_attention_heads"])
    kv, vocab = int(config["num_key_value_heads"] or heads), int(config["vocab_size"])
    if hidden % heads or heads % kv:
        raise InvalidArgumentError(
            f"{path.name}: {heads} heads over {kv} KV heads do not divide {hidden}"
        )
    for name in TOKEN_IDS:
        value = meta.get(f"tokenizer.ggml.{name}_token_id")
        if value is not None and (not isinstance(value, int) or not 0 <= value < vocab):
            raise InvalidArgumentError(
                f"{path.name}: its {name} token id {value!r} is outside its vocabulary"
            )
    _check_tensors(path.name, config, tensors)
    kinds = dict(Counter(tensor.kind for tensor in tensors.values()))
    parameters = sum(math.prod(t.shape) for t in tensors.values())
    return GgufCheckpoint(path, config, kinds, parameters, file_sampling(meta))


def _check_tensors(name: str, config: dict[str, Any], tensors: dict) -> None:
    """Every tensor a Llama of `config` has, with its shape, and nothing else."""
    hidden, heads = config["hidden_size"], config["num_attention_heads"]
    ffn, vocab = config["intermediate_size"], config["vocab_size"]
    head_dim = hidden // heads
    kv = (config["num_key_value_heads"] or heads) * head_dim
    expected = {"token_embd.weight": [hidden, vocab], "output_norm.weight": [hidden]}
    optional = {"output.weight": [hidden, vocab], "rope_freqs.weight": [head_dim // 2]}
    for i in range(config["num_hidden_layers"]):
        layer = {
            "attn_norm": [hidden],
            "ffn_norm": [hidden],
            "attn_q": [hidden, heads * head_dim],
            "attn_k": [hidden, kv],
            "attn_v": [hidden, kv],
            "attn_output": [heads * head_dim, hidden],
            "ffn_gate": [hidden, ffn],
            "ffn_up": [hidden, ffn],
            "ffn_down": [ffn, hidden],
        }
        expected.update({f"blk.{i}.{k}.weight": shape for k, shape in layer.items()})
    for key, shape in {**expected, **optional}.items():
        tensor = tensors.get(key)
        if (tensor is not None or key in expected) and (
            tensor is None or tensor.shape != shape
        ):
            found = tensor.shape if tensor is not None else "missing"
            raise InvalidArgumentError(
                f"{name}: {key} is {found}, its metadata says {shape}"
            )
    extra = sorted(set(tensors) - set(expected) - set(optional))
    if extra:
        raise InvalidArgumentError(
            f"{name} holds tensors a Llama does not have: {', '.join(extra[:3])}"
        )


def copy_gguf(vetted: GgufCheckpoint, target: Path) -> GgufCheckpoint:
    """Copies the vetted file's bytes to `target` (opened without following a last
    symlink, so a file swapped for a link since it was vetted is refused) and vets
    the copy, which must be the file that was vetted."""
    copy_file(vetted.path, target)
    copy = vet_gguf(target)
    if (copy.config, copy.kinds, copy.parameters) != (
        vetted.config,
        vetted.kinds,
        vetted.parameters,
    ):
        raise InvalidArgumentError(f"{vetted.path.name} changed while it was imported")
    return copy


def vet_source(path: Path) -> Checkpoint | GgufCheckpoint:
    """What an import reads: a Hugging Face checkpoint directory or a GGUF file."""
    if path.is_file():
        if path.suffix.lower() != ".gguf":
            raise InvalidArgumentError(
                f"{path.name} is a file: give a Hugging Face checkpoint directory "
                "or a .gguf file"
            )
        return vet_gguf(path)
    return vet_checkpoint(path)
