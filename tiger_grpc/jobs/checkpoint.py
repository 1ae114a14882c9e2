"""What an import may read, judged before anything is copied.

The path: absolute, no `..`, and, when `TIGER_IMPORT_ROOTS` is set, inside one of
those directories once symlinks are followed (else PERMISSION_DENIED, nothing
read). The checkpoint: only safetensors weights (no pickle, no `torch.load`), no
custom code (`auto_map`), `config.json` and the tokenizer files size-checked and
parsed as data, the config's sizes within sane bounds and in agreement with the
shapes the safetensors headers declare, no symlink that leads out of it. Only
the files vetted here are copied into the store.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..api.errors import InvalidArgumentError, NotFoundError, PermissionDeniedError

MAX_CONFIG_BYTES = 1 << 20
MAX_TOKENIZER_BYTES = 64 << 20
MAX_HEADER_BYTES = 100 << 20  # a safetensors header (JSON) is far smaller
DATA_FILES = {
    "config.json",
    "generation_config.json",
    "tokenizer.json",
    "tokenizer.model",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "chat_template.jinja",
    "model.safetensors.index.json",
}
PICKLES = (".bin", ".pt", ".pth", ".pkl", ".ckpt")
# A Llama's sizes, generously bounded: past these a config is an attack or a typo.
BOUNDS = {
    "vocab_size": 1 << 21,
    "hidden_size": 1 << 16,
    "intermediate_size": 1 << 18,
    "num_hidden_layers": 1024,
    "num_attention_heads": 1024,
    "num_key_value_heads": 1024,
    "max_position_embeddings": 1 << 24,
}


def import_roots(env: Mapping[str, str] = os.environ) -> tuple[Path, ...]:
    """TIGER_IMPORT_ROOTS: directories separated by ':' (resolved)."""
    value = env.get("TIGER_IMPORT_ROOTS", "")
    return tuple(Path(p).resolve() for p in value.split(os.pathsep) if p.strip())


def vet_path(given: str, roots: tuple[Path, ...]) -> Path:
    """The checkpoint directory a request names, resolved; refused (nothing read)
    when it is relative, has `..`, or leads outside the roots."""
    path = Path(given)
    if not path.is_absolute():
        raise InvalidArgumentError(
            f"`path` must be absolute (the server reads it), got {given!r}"
        )
    if ".." in path.parts:
        raise InvalidArgumentError("`path` must not contain `..`")
    try:
        resolved = path.resolve()
    except (ValueError, OSError) as exc:  # a NUL byte, a lone surrogate, a loop
        raise NotFoundError(
            f"no checkpoint at {given!r}: no file here can have that path ({exc})"
        ) from None
    if roots and not any(resolved.is_relative_to(root) for root in roots):
        raise PermissionDeniedError(
            "`path` is outside the directories this server imports from "
            "(TIGER_IMPORT_ROOTS)"
        )
    return resolved


@dataclass(frozen=True)
class Checkpoint:
    directory: Path
    config: dict[str, Any]
    files: tuple[str, ...]  # what the import copies, and nothing else


def vet_checkpoint(directory: Path) -> Checkpoint:
    """The checkpoint's config and files, once every rule holds."""
    if not directory.is_dir():
        raise NotFoundError(f"no checkpoint directory at {directory}")
    names = _files(directory)
    if "config.json" not in names:
        raise NotFoundError(
            f"no Hugging Face checkpoint at {directory}: no config.json"
        )
    weights = sorted(n for n in names if n.endswith(".safetensors"))
    if not weights:
        pickles = sorted(n for n in names if n.endswith(PICKLES))
        raise InvalidArgumentError(
            f"{directory} has no safetensors weights"
            + (
                f" ({pickles[0]} is a pickle file, which Tiger never loads)"
                if pickles
                else ""
            )
        )
    if not {"tokenizer.json", "tokenizer.model"} & names:
        raise InvalidArgumentError(
            f"{directory} has no tokenizer (tokenizer.json or tokenizer.model)"
        )
    config = _json(directory / "config.json", MAX_CONFIG_BYTES)
    check_config(config)
    for name in ("tokenizer.json", "tokenizer_config.json", "generation_config.json"):
        if name in names:
            _json(directory / name, MAX_TOKENIZER_BYTES)
    _check_shapes(config, [directory / w for w in weights])
    kept = sorted(n for n in names if n in DATA_FILES or n.endswith(".safetensors"))
    return Checkpoint(directory, config, tuple(kept))


def _files(directory: Path) -> set[str]:
    """The directory's regular files (by name); a symlink must stay inside it."""
    names = set()
    with os.scandir(directory) as entries:
        for entry in entries:
            if entry.is_symlink():
                target = Path(entry.path).resolve()
                if not target.is_relative_to(directory):
                    raise InvalidArgumentError(
                        f"{entry.name} in the checkpoint is a symlink to outside it"
                    )
            if entry.is_file():
                names.add(entry.name)
    return names


def _json(path: Path, limit: int) -> dict[str, Any]:
    size = path.stat().st_size
    if size > limit:
        raise InvalidArgumentError(
            f"{path.name} is {size} bytes, more than the {limit} read for it"
        )
    try:
        value = json.loads(path.read_bytes())
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidArgumentError(f"{path.name} is not JSON: {exc}") from None
    if not isinstance(value, dict):
        raise InvalidArgumentError(f"{path.name} must hold a JSON object")
    return value


def check_config(config: dict[str, Any], source: str = "config.json") -> None:
    if config.get("model_type") != "llama":
        raise InvalidArgumentError(
            "only Llama-architecture checkpoints can be imported, this one is "
            f"{config.get('model_type')!r}"
        )
    if config.get("auto_map"):
        raise InvalidArgumentError(
            "config.json names custom code (`auto_map`), which Tiger never runs"
        )
    for field, bound in BOUNDS.items():
        value = config.get(field)
        if value is None and field in ("num_key_value_heads", "intermediate_size"):
            continue
        if (
            not isinstance(value, int)
            or isinstance(value, bool)
            or not 0 < value <= bound
        ):
            raise InvalidArgumentError(
                f"{source}: `{field}` must be an integer from 1 to {bound}, "
                f"got {value!r}"
            )


def _header(path: Path) -> dict[str, Any]:
    """A safetensors file's header (tensor names, dtypes, shapes, offsets): its
    first bytes only, checked against the file's size."""
    size = path.stat().st_size
    with path.open("rb") as f:
        raw = f.read(8)
        if len(raw) < 8:
            raise InvalidArgumentError(f"{path.name} is not a safetensors file")
        (length,) = struct.unpack("<Q", raw)
        if length > min(MAX_HEADER_BYTES, size - 8):
            raise InvalidArgumentError(f"{path.name} has a header of {length} bytes")
        try:
            header = json.loads(f.read(length))
        except (ValueError, UnicodeDecodeError):
            raise InvalidArgumentError(f"{path.name} has no JSON header") from None
    if not isinstance(header, dict):
        raise InvalidArgumentError(f"{path.name}'s header is not a JSON object")
    data = size - 8 - length
    for name, tensor in header.items():
        if name == "__metadata__":
            continue
        offsets = tensor.get("data_offsets") if isinstance(tensor, dict) else None
        shape = tensor.get("shape") if isinstance(tensor, dict) else None
        if not (_ints(offsets) and len(offsets) == 2 and _ints(shape)):
            raise InvalidArgumentError(
                f"{path.name}: {name} has no integer shape and data offsets"
            )
        if not 0 <= offsets[0] <= offsets[1] <= data:
            raise InvalidArgumentError(
                f"{path.name}: {name} lies past the end of the file"
            )
    return header


def _ints(value: Any) -> bool:
    return isinstance(value, list) and all(
        isinstance(v, int) and not isinstance(v, bool) for v in value
    )


def copy_vetted(checkpoint: Checkpoint, target: Path) -> None:
    """Copies the vetted files' bytes into `target` (never a hard link: the store
    must not share a file someone may rewrite later). Each file is resolved again
    and opened without following a last symlink, so a file swapped for a link to
    elsewhere since it was vetted is refused; the copy is vetted again."""
    source = checkpoint.directory
    target.mkdir(parents=True, exist_ok=True)
    for name in checkpoint.files:
        path = (source / name).resolve()
        if not path.is_relative_to(source):
            raise InvalidArgumentError(
                f"{name} changed into a link out of the checkpoint"
            )
        copy_file(path, target / name)
    copied = vet_checkpoint(target)
    if copied.files != checkpoint.files:
        raise InvalidArgumentError("the checkpoint changed while it was imported")


def copy_file(path: Path, target: Path) -> None:
    """Copies a vetted file's bytes to `target`, opened without following a last
    symlink: a file swapped for a link (or anything but a regular file) since it
    was vetted is refused."""
    try:
        descriptor = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError:
        raise InvalidArgumentError(
            f"{path.name} changed into a link or vanished since it was vetted"
        ) from None
    with os.fdopen(descriptor, "rb") as src, target.open("wb") as dst:
        if not stat.S_ISREG(os.fstat(src.fileno()).st_mode):
            raise InvalidArgumentError(f"{path.name} is no longer a regular file")
        shutil.copyfileobj(src, dst, 16 << 20)


def _check_shapes(config: dict[str, Any], weights: list[Path]) -> None:
    """The shapes the headers declare are the config's."""
    shapes: dict[str, list[int]] = {}
    for path in weights:
        for name, tensor in _header(path).items():
            if name != "__metadata__":
                shapes[name] = list(tensor.get("shape") or [])
    hidden, vocab = config["hidden_size"], config["vocab_size"]
    heads = config["num_attention_heads"]
    kv = config.get("num_key_value_heads") or heads
    head_dim = config.get("head_dim") or hidden // heads
    expected = {
        "model.embed_tokens.weight": [vocab, hidden],
        "model.layers.0.self_attn.q_proj.weight": [heads * head_dim, hidden],
        "model.layers.0.self_attn.k_proj.weight": [kv * head_dim, hidden],
    }
    if config.get("intermediate_size"):
        expected["model.layers.0.mlp.gate_proj.weight"] = [
            config["intermediate_size"],
            hidden,
        ]
    for name, shape in expected.items():
        if shapes.get(name) != shape:
            raise InvalidArgumentError(
                f"the weights disagree with config.json: {name} is "
                f"{shapes.get(name)}, the config says {shape}"
            )
    layers = {
        n.split(".")[2]
        for n in shapes
        if n.startswith("model.layers.") and n.split(".")[2].isdigit()
    }
    if len(layers) != config["num_hidden_layers"]:
        raise InvalidArgumentError(
            f"the weights have {len(layers)} layers, config.json says "
            f"{config['num_hidden_layers']}"
        )
