"""Where a graph's weights come from: a checkpoint, one tensor at a time, or a
random pool of the right shapes (speed does not depend on the values)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np

from ...runtime.ml import IMPORT_LOCK
from .shape import LlamaShape

Tensors = Callable[[str], np.ndarray]  # HF parameter name -> its array


def checkpoint_tensors(hf_dir: Path) -> Tensors:
    """Reads a checkpoint's tensors one at a time (safetensors), or through
    transformers for other formats."""
    files = sorted(hf_dir.glob("*.safetensors"))
    if not files:
        with IMPORT_LOCK:
            import torch
            from transformers import AutoModelForCausalLM

        model = AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32)
        state = model.state_dict()
        return lambda name: state[name].detach().float().numpy()

    with IMPORT_LOCK:
        import torch
        from safetensors import safe_open

    where: dict[str, Path] = {}
    index = hf_dir / "model.safetensors.index.json"
    if index.is_file():
        for name, file in json.loads(index.read_text())["weight_map"].items():
            where[name] = hf_dir / file
    else:
        for file in files:
            with safe_open(file, framework="pt") as handle:
                where.update(dict.fromkeys(handle.keys(), file))

    def read(name: str) -> np.ndarray:
        with safe_open(where[name], framework="pt") as handle:
            return handle.get_tensor(name).to(torch.float32).numpy()

    return read


def random_tensors(shape: LlamaShape, seed: int = 0) -> Tensors:
    """Weights of the right shapes with random values (for timing: speed does not
    depend on the values). Every tensor is a window on one random pool."""
    pool = np.random.default_rng(seed).standard_normal(1 << 24, np.float32) * 0.02
    h, kv = shape.hidden, shape.kv_heads * shape.head_dim
    q = shape.heads * shape.head_dim

    def shape_of(name: str) -> tuple[int, ...]:
        if name in ("model.embed_tokens.weight", "lm_head.weight"):
            return (shape.vocab, h)
        part = name.rsplit(".", 2)[-2]
        return {
            "input_layernorm": (h,),
            "post_attention_layernorm": (h,),
            "norm": (h,),
            "q_proj": (q, h),
            "k_proj": (kv, h),
            "v_proj": (kv, h),
            "o_proj": (h, q),
            "gate_proj": (shape.intermediate, h),
            "up_proj": (shape.intermediate, h),
            "down_proj": (h, shape.intermediate),
        }[part]

    def read(name: str) -> np.ndarray:
        dims = shape_of(name)
        if len(dims) == 1:
            return np.ones(dims, np.float32)
        size = int(np.prod(dims))
        reps = -(-size // pool.size)
        flat = np.tile(pool, reps)[:size] if reps > 1 else pool[:size]
        return flat.reshape(dims)

    return read
