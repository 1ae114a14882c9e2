"""What a GGUF import may read, judged before anything else reads the file.

The header is parsed here, every count and length checked against the bytes that
remain: gguf's own reader trusts them, and a few bytes claiming a huge array make
it loop and allocate without end. Then the file must be a Llama of sane sizes with
its tokenizer inside and token ids within it, every layer's tensors present with
the shapes its metadata implies and nothing else, each tensor's bytes within the
file and overlapping no other. The import then works from a copy of the file in
the store, vetted again (the user's file may change after it was vetted).
"""

from __future__ import annotations

import mmap
import os
import shutil
import stat
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..api.errors import InvalidArgumentError
from .checkpoint import Checkpoint, check_config, vet_checkpoint

MAX_KEYS = MAX_TENSORS = 1 << 16
MAX_DIMS = 4
# GGUF's value types: the fixed-size ones by struct format; 8 string, 9 array.
SCALARS = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q"}
SCALARS |= {11: "q", 12: "d"}
STRING, ARRAY = 8, 9


@dataclass(frozen=True)
class GgufCheckpoint:
    path: Path
    config: dict[str, Any]  # its sizes, named as a Hugging Face config names them
    kinds: dict[str, int]  # how many tensors of each block type it holds
    parameters: int


@dataclass(frozen=True)
class Tensor:
    shape: list[int]  # innermost first, as GGUF lists it: (inputs, outputs)
    kind: str
    offset: int
    size: int  # bytes


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
        return _Array(count)


@dataclass(frozen=True)
class _Array:
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
        count = _count(shape)
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


def vet_gguf(path: Path) -> GgufCheckpoint:
    """A Llama GGUF file whose header, sizes, tokenizer and tensors all hold."""
    meta, tensors = read_header(path)
    tokens = meta.get("tokenizer.ggml.tokens")
    config: dict[str, Any] = {
        "model_type": meta.get("general.architecture"),
        "vocab_size": tokens.count if isinstance(tokens, _Array) else None,
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
    kinds: dict[str, int] = {}
    for tensor in tensors.values():
        kinds[tensor.kind] = kinds.get(tensor.kind, 0) + 1
    parameters = sum(_count(t.shape) for t in tensors.values())
    return GgufCheckpoint(path, config, kinds, parameters)


def _count(shape: list[int]) -> int:
    total = 1
    for n in shape:
        total *= n
    return total


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
    try:
        descriptor = os.open(vetted.path, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError:
        raise InvalidArgumentError(
            f"{vetted.path.name} changed into a link or vanished since it was vetted"
        ) from None
    with os.fdopen(descriptor, "rb") as src, target.open("wb") as dst:
        if not stat.S_ISREG(os.fstat(src.fileno()).st_mode):
            raise InvalidArgumentError(
                f"{vetted.path.name} is no longer a regular file"
            )
        shutil.copyfileobj(src, dst, 16 << 20)
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
