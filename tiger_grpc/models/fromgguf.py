"""A Llama GGUF file as a Hugging Face checkpoint: transformers dequantizes its
weights and converts its tokenizer; the file's own end of turn, padding and BOS
rule (its metadata) are put back where the conversion loses them.

The weights written here are the float image of the file's blocks; the int4 fused
graph later takes the Q4_0/Q4_1/Q8_0 blocks themselves (`graph.gguf`), so an
import of such a file computes with its weights exactly; other block types (the
K-quants) are quantized again by ONNX Runtime, and the manifest says which.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from ..runtime.ml import IMPORT_LOCK


def gguf_metadata(reader: Any) -> dict[str, Any]:
    """A GGUF reader's scalar and string fields (arrays such as the vocabulary are
    left out, their length kept as `<key>.count`)."""
    found: dict[str, Any] = {}
    for key, field in reader.fields.items():
        if field.types and field.types[0].name == "ARRAY":
            found[f"{key}.count"] = len(field.data)
            continue
        try:
            found[key] = field.contents()
        except (ValueError, IndexError, TypeError):  # a field gguf cannot decode
            continue
    return found


def convert_gguf(
    gguf: Path, hf_dir: Path, sampling: dict[str, float] | None = None
) -> None:
    """Writes `gguf` dequantized as HF weights and a fast tokenizer in `hf_dir`;
    `sampling`: defaults for its generation config (a GGUF carries none)."""
    with IMPORT_LOCK:
        from gguf import GGUFReader
        from transformers import AutoModelForCausalLM, AutoTokenizer

    meta = gguf_metadata(GGUFReader(gguf))
    # Read from a directory of its own: transformers would also take a
    # tokenizer_config.json or config.json lying next to the file.
    with tempfile.TemporaryDirectory(prefix="tiger-gguf-") as alone:
        (Path(alone) / gguf.name).symlink_to(gguf.resolve())
        tokenizer = AutoTokenizer.from_pretrained(alone, gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(alone, gguf_file=gguf.name)
    tokens = tokenizer.convert_ids_to_tokens
    if isinstance(meta.get("tokenizer.ggml.eos_token_id"), int):
        tokenizer.eos_token = tokens(meta["tokenizer.ggml.eos_token_id"])
    if isinstance(meta.get("tokenizer.ggml.padding_token_id"), int):
        tokenizer.pad_token = tokens(meta["tokenizer.ggml.padding_token_id"])
    if isinstance(meta.get("tokenizer.ggml.add_bos_token"), bool) and hasattr(
        tokenizer, "add_bos_token"
    ):
        tokenizer.add_bos_token = meta["tokenizer.ggml.add_bos_token"]
    generation = model.generation_config
    if generation is not None and tokenizer.eos_token_id is not None:
        generation.eos_token_id = tokenizer.eos_token_id
    if generation is not None and sampling:
        generation.update(do_sample=True, **sampling)
    model.save_pretrained(hf_dir)
    tokenizer.save_pretrained(hf_dir)
