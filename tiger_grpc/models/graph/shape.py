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
    rope_type = "default"
    if getattr(config, "rope_scaling", None):
        rope_type = config.rope_scaling.get(
            "rope_type", config.rope_scaling.get("type", "default")
        )
    with IMPORT_LOCK:
        import torch
        from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    if rope_type not in ROPE_INIT_FUNCTIONS and rope_type == "default":
        # transformers 5.x has no "default" entry: plain RoPE, computed here (it
        # agrees with transformers 4.x's to 1 ulp of the frequencies)
        return _default_rope(config, max_len)
    inv_freq, scaling = ROPE_INIT_FUNCTIONS[rope_type](config, torch.device("cpu"))
    positions = torch.arange(max_len, dtype=torch.float32)
    freqs = torch.outer(positions, inv_freq.float())
    return (
        (torch.cos(freqs) * scaling).numpy().astype(np.float32),
        (torch.sin(freqs) * scaling).numpy().astype(np.float32),
    )


def _default_rope(config: Any, max_len: int) -> tuple[np.ndarray, np.ndarray]:
    """cos and sin of plain RoPE, as transformers' "default" computes them."""
    heads = config.num_attention_heads
    dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    dim = int(dim * getattr(config, "partial_rotary_factor", 1.0))
    base = float(getattr(config, "rope_theta", 10000.0))
    exponents = np.arange(0, dim, 2, dtype=np.int64).astype(np.float32) / dim
    inv_freq = (np.float32(1.0) / (np.float32(base) ** exponents)).astype(np.float32)
    freqs = np.outer(np.arange(max_len, dtype=np.float32), inv_freq)
    return np.cos(freqs).astype(np.float32), np.sin(freqs).astype(np.float32)
