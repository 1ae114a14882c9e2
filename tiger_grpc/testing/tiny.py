"""The tiny test model: a 2-layer random-weight Llama with the real SmolLM2
tokenizer (gibberish text, real protocol behaviour), built through the same
pipeline as every model, with fused fp32 and fp16 graphs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..models.pipeline import build_model
from ..models.store import ModelManifest, ModelStore

TINY_MODEL_ID = "tiny-llama"


def tiny_llama_config(vocab_size: int, **overrides: Any) -> Any:
    """The tiny test Llama's shape: 2 layers 64 wide, 4 heads over 2 KV heads."""
    from transformers import LlamaConfig

    return LlamaConfig(
        **{
            "vocab_size": vocab_size,
            "hidden_size": 64,
            "intermediate_size": 128,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
            "bos_token_id": 1,
            "eos_token_id": 2,
            **overrides,
        }
    )


def _tokenizer(tokenizer_dir: Path | None) -> Any:
    """The embedded model's tokenizer: from its GGUF file unless `tokenizer_dir`."""
    from transformers import AutoTokenizer

    from ..models.embedded import find_gguf

    if tokenizer_dir is not None:
        return AutoTokenizer.from_pretrained(tokenizer_dir)
    gguf = find_gguf()
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    tokenizer.eos_token = tokenizer.pad_token = "<|im_end|>"
    tokenizer.add_bos_token = False
    return tokenizer


def build_tiny_model(
    store: ModelStore,
    tokenizer_dir: Path | None = None,
    model_id: str = TINY_MODEL_ID,
    context_length: int = 4096,
) -> ModelManifest:
    """The tiny model in `store` (built once)."""
    existing = store.get(model_id)
    if existing is not None:
        return existing
    import torch
    from transformers import LlamaForCausalLM

    tokenizer = _tokenizer(tokenizer_dir)
    torch.manual_seed(0)
    config = tiny_llama_config(
        len(tokenizer),
        max_position_embeddings=context_length,
        pad_token_id=2,
        tie_word_embeddings=True,
    )
    model = LlamaForCausalLM(config).eval()

    def write_hf(hf_dir: Path) -> None:
        model.save_pretrained(hf_dir)
        tokenizer.save_pretrained(hf_dir)

    source = "tiger_grpc.testing: random weights"
    return build_model(store, model_id, source, write_hf, ["fp32", "fp16"])
