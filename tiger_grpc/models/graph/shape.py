"""What the fused graph needs to know of a Llama config, and its RoPE tables."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ...runtime.ml import IMPORT_LOCK


@dataclass(frozen=True)
class LlamaShape:
    """What the graph needs to know of a Llama config."""

    hidden: int
    intermediate: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int
    eps: float
    max_len: int
    tied: bool

    @classmethod
    def of(cls, config: Any) -> LlamaShape:
        if config.model_type != "llama":
            raise ValueError(
                f"the fused graph supports Llama models, not {config.model_type}"
            )
        if getattr(config, "attention_bias", False) or getattr(
            config, "mlp_bias", False
        ):
            raise ValueError("the fused graph supports Llama models without biases")
        heads = config.num_attention_heads
        return cls(
            hidden=config.hidden_size,
            intermediate=config.intermediate_size,
            layers=config.num_hidden_layers,
            heads=heads,
            kv_heads=config.num_key_value_heads,
            head_dim=getattr(config, "head_dim", None) or config.hidden_size // heads,
            vocab=config.vocab_size,
            eps=float(config.rms_norm_eps),
            max_len=int(config.max_position_embeddings),
            tied=bool(getattr(config, "tie_word_embeddings", False)),
        )


def rope_tables(config: Any, max_len: int) -> tuple[np.ndarray, np.ndarray]:
    with IMPORT_LOCK:
        import torch
        from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    rope_type = "default"
    if getattr(config, "rope_scaling", None):
        rope_type = config.rope_scaling.get(
            "rope_type", config.rope_scaling.get("type", "default")
        )
    inv_freq, scaling = ROPE_INIT_FUNCTIONS[rope_type](config, torch.device("cpu"))
    positions = torch.arange(max_len, dtype=torch.float32)
    freqs = torch.outer(positions, inv_freq.float())
    return (
        (torch.cos(freqs) * scaling).numpy().astype(np.float32),
        (torch.sin(freqs) * scaling).numpy().astype(np.float32),
    )
