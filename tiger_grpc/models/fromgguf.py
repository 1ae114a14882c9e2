"""A Llama GGUF file: its header read with every count and length bounded by the
bytes that remain (gguf's own reader trusts them, and a few bytes claiming a huge
array make it loop and allocate without end), and the file as a Hugging Face
checkpoint: transformers dequantizes its weights and converts its tokenizer; the
file's own end of turn, padding and BOS rule (its metadata) are put back where
the conversion loses them, and the sampling its author recommends (llama.cpp's
`general.sampling.*` keys) becomes its generation config's, as a checkpoint's
`generation_config.json` does.

The weights written here are the float image of the file's blocks; the int4 fused
graph later takes the Q4_0/Q4_1/Q8_0 blocks themselves (`graph.gguf`), so an
import of such a file computes with its weights exactly; other block types (the
K-quants) are quantized again by ONNX Runtime, and the manifest says which.
"""

from __future__ import annotations

import json
import math
import mmap
import struct
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..api.errors import InvalidArgumentError
from ..runtime.ml import IMPORT_LOCK
from .export import SAMPLING_FIELDS

MAX_KEYS = MAX_TENSORS = 1 << 16
MAX_DIMS = 4
# GGUF's value types: the fixed-size ones by struct format; 8 string, 9 array.
SCALARS = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q"}
SCALARS |= {11: "q", 12: "d"}
STRING, ARRAY = 8, 9
# llama.cpp's keys for the sampling a file recommends (its converter writes them
# from the checkpoint's generation_config.json; llama-server takes them as defaults).
GGUF_SAMPLING = {
    "general.sampling.temp": "temperature",
    "general.sampling.top_p": "top_p",
    "general.sampling.top_k": "top_k",
}


@dataclass(frozen=True)
class Tensor:
    shape: list[int]  # innermost first, as GGUF lists it: (inputs, outputs)
    kind: str
    offset: int
    size: int  # bytes


class _Cursor:
    """Reads a GGUF header from `data`, never past its end."""

    def __init__(self, data: memoryview, name: str) -> None:
        self.data, self.at, self.name = data, 0, name

    def refuse(self, what: str) -> InvalidArgumentError:
        return InvalidArgumentError(f"{self.name}: {what} (truncated or damaged?)")

    def take(self, fmt: str) -> Any:
        size = struct.calcsize("<" + fmt)
        if self.at + size > len(self.data):
            raise self.refuse("the header ends early")
        (value,) = struct.unpack_from("<" + fmt, self.data, self.at)
        self.at += size
        return value

    def skip(self, size: int) -> None:
        if size > len(self.data) - self.at:
            raise self.refuse("a value runs past the end of the file")
        self.at += size

    def string(self) -> str:
        size = self.take("Q")
        start = self.at
        self.skip(size)
        return bytes(self.data[start : self.at]).decode("utf-8", "replace")

    def value(self, kind: int) -> Any:
        """A scalar or a string; an array is skipped and its length returned."""
        if kind in SCALARS:
            return self.take(SCALARS[kind])
        if kind == STRING:
            return self.string()
        if kind != ARRAY:
            raise self.refuse(f"unknown value type {kind}")
        item, count = self.take("I"), self.take("Q")
        if item in SCALARS:
            self.skip(count * struct.calcsize("<" + SCALARS[item]))
        elif item == STRING:
            if count * 8 > len(self.data) - self.at:
                raise self.refuse("an array runs past the end of the file")
            for _ in range(count):
                self.skip(self.take("Q"))
        else:
            raise self.refuse(f"an array of value type {item}")
        return Array(count)


@dataclass(frozen=True)
class Array:
    count: int


def read_header(path: Path) -> tuple[dict[str, Any], dict[str, Tensor]]:
    """The file's metadata (arrays as their lengths) and tensors, all bounded."""
    size = path.stat().st_size
    with path.open("rb") as f:
        if size < 24 or f.read(4) != b"GGUF":
            raise InvalidArgumentError(f"{path.name} is not a GGUF file")
        with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as whole:
            view = memoryview(whole)
            try:
                cursor = _Cursor(view, path.name)
                cursor.skip(4)
                version, tensors, keys = (cursor.take(t) for t in ("I", "Q", "Q"))
                if version not in (2, 3) or tensors > MAX_TENSORS or keys > MAX_KEYS:
                    raise cursor.refuse(
                        f"version {version}, {tensors} tensors, {keys} keys"
                    )
                meta = {}
                for _ in range(keys):
                    key = cursor.string()
                    meta[key] = cursor.value(cursor.take("I"))
                infos = []
                for _ in range(tensors):
                    name, dims = cursor.string(), cursor.take("I")
                    if dims > MAX_DIMS:
                        raise cursor.refuse(f"{name} has {dims} dimensions")
                    shape = [cursor.take("Q") for _ in range(dims)]
                    infos.append((name, shape, cursor.take("I"), cursor.take("Q")))
                header_end = cursor.at
            finally:
                del cursor
                view.release()
    return meta, _tensors(path.name, meta, infos, header_end, size)


def _tensors(
    name: str, meta: dict[str, Any], infos: list, header_end: int, size: int
) -> dict[str, Tensor]:
    """The tensors' places and sizes: each within the file, none overlapping."""
    from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType

    alignment = meta.get("general.alignment", 32)
    if not isinstance(alignment, int) or not 0 < alignment <= 1 << 16:
        raise InvalidArgumentError(f"{name}: alignment {alignment!r}")
    data = -(-header_end // alignment) * alignment
    found: dict[str, Tensor] = {}
    for key, shape, code, offset in infos:
        try:
            kind = GGMLQuantizationType(code)
            block, block_bytes = GGML_QUANT_SIZES[kind]
        except (ValueError, KeyError):
            raise InvalidArgumentError(
                f"{name}: {key} has block type {code}, unknown"
            ) from None
        count = math.prod(shape)
        if not shape or shape[0] % block or key in found:
            raise InvalidArgumentError(f"{name}: tensor {key} is malformed")
        found[key] = Tensor(
            shape, kind.name, data + offset, count // block * block_bytes
        )
    end = data
    for key, tensor in sorted(found.items(), key=lambda item: item[1].offset):
        if tensor.offset < end or tensor.offset + tensor.size > size:
            raise InvalidArgumentError(
                f"{name}: {key} overlaps another tensor or lies past the end "
                "of the file"
            )
        end = tensor.offset + tensor.size
    return found


def file_sampling(meta: dict[str, Any]) -> dict[str, float]:
    """The sampling settings a file's metadata recommends (temperature, top_p,
    top_k), those in range only; a float32 as written (0.9, not 0.899999976)."""
    found: dict[str, float] = {}
    for key, name in GGUF_SAMPLING.items():
        value: Any = meta.get(key)
        if isinstance(value, float):  # float32's seven digits
            value = float(f"{value:.7g}")
        if SAMPLING_FIELDS[name](value):
            found[name] = value
    return found


def convert_gguf(
    gguf: Path, hf_dir: Path, sampling: dict[str, float] | None = None
) -> None:
    """Writes `gguf` dequantized as HF weights and a fast tokenizer in `hf_dir`,
    with the sampling its metadata recommends in its generation config (`sampling`,
    where given, in their place)."""
    with IMPORT_LOCK:
        from transformers import AutoModelForCausalLM, AutoTokenizer

    meta, _ = read_header(gguf)
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
    sampling = {**file_sampling(meta), **(sampling or {})}
    generation = model.generation_config
    if generation is not None and tokenizer.eos_token_id is not None:
        generation.eos_token_id = tokenizer.eos_token_id
    model.save_pretrained(hf_dir)
    tokenizer.save_pretrained(hf_dir)
    if sampling:  # written whole: transformers leaves out values equal to its own
        # defaults (top_k 50, temperature 1.0), which the file's may be
        path = hf_dir / "generation_config.json"
        config = json.loads(path.read_text()) if path.is_file() else {}
        config.update(do_sample=True, **sampling)
        path.write_text(json.dumps(config, indent=2) + "\n")
