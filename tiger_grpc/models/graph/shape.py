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


def rope_parameters(config: Any) -> dict[str, Any]:
    """RoPE's type, base and scaling as one dict, whichever transformers made the
    config: 4.x keeps `rope_theta` and `rope_scaling`, 5.x `rope_parameters`
    (with the base inside it, and no `rope_theta` attribute)."""
    params = dict(
        getattr(config, "rope_parameters", None)
        or getattr(config, "rope_scaling", None)
        or {}
    )
    params.setdefault("rope_type", params.get("type", "default"))
    params.setdefault("rope_theta", float(getattr(config, "rope_theta", 10000.0)))
    return params


def rope_tables(config: Any, max_len: int) -> tuple[np.ndarray, np.ndarray]:
    params = rope_parameters(config)
    rope_type = params["rope_type"]
    with IMPORT_LOCK:
        try:
            import torch
            from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS
        except ImportError:  # a machine without torch (`make gpu-check`)
            torch, ROPE_INIT_FUNCTIONS = None, {}

    if rope_type not in ROPE_INIT_FUNCTIONS and rope_type in NUMPY_ROPE:
        # transformers 5.x has no "default" entry, and without torch there are
        # none: plain and Llama-3 RoPE are computed here (they agree with
        # transformers 4.x's to 1 ulp of the frequencies)
        return _numpy_rope(config, params, max_len)
    if torch is None:
        raise ValueError(f"RoPE of type {rope_type!r} needs torch to compute")
    inv_freq, scaling = ROPE_INIT_FUNCTIONS[rope_type](config, torch.device("cpu"))
    positions = torch.arange(max_len, dtype=torch.float32)
    freqs = torch.outer(positions, inv_freq.float())
    return (
        (torch.cos(freqs) * scaling).numpy().astype(np.float32),
        (torch.sin(freqs) * scaling).numpy().astype(np.float32),
    )


NUMPY_ROPE = ("default", "llama3")


def _numpy_rope(
    config: Any, params: dict[str, Any], max_len: int
) -> tuple[np.ndarray, np.ndarray]:
    """cos and sin of plain or Llama-3 RoPE (`params`: `rope_parameters`), as
    transformers computes them."""
    heads = config.num_attention_heads
    dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    dim = int(dim * getattr(config, "partial_rotary_factor", 1.0))
    base = float(params["rope_theta"])
    exponents = np.arange(0, dim, 2, dtype=np.int64).astype(np.float32) / dim
    inv_freq = (np.float32(1.0) / (np.float32(base) ** exponents)).astype(np.float32)
    if params["rope_type"] == "llama3":
        inv_freq = _llama3_frequencies(inv_freq, params)
    freqs = np.outer(np.arange(max_len, dtype=np.float32), inv_freq)
    return np.cos(freqs).astype(np.float32), np.sin(freqs).astype(np.float32)


def _llama3_frequencies(inv_freq: np.ndarray, params: dict[str, Any]) -> np.ndarray:
    """Llama 3.1's scaling: long wavelengths divided by `factor`, short ones kept,
    the band between blended."""
    factor = np.float32(params["factor"])
    low, high = float(params["low_freq_factor"]), float(params["high_freq_factor"])
    context = float(params["original_max_position_embeddings"])
    wavelen = np.float32(2 * np.pi) / inv_freq
    scaled = np.where(wavelen > context / low, inv_freq / factor, inv_freq)
    smooth = ((context / wavelen - low) / (high - low)).astype(np.float32)
    blended = (1 - smooth) * scaled / factor + smooth * scaled
    medium = (wavelen >= context / high) & (wavelen <= context / low)
    return np.where(medium, blended, scaled).astype(np.float32)
