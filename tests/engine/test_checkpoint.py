"""What an import may read, tried as an attacker would: paths out of the import
roots (`..`, absolute, a symlink out of a root, /proc/self/environ), symlinks out
of a checkpoint, pickle weights, custom code, absurd or lying configs, forged
safetensors headers. All refused before anything is copied."""

from __future__ import annotations

import dataclasses
import json
import re
import shutil
import struct
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save_file

from tiger_grpc.api.errors import (
    InvalidArgumentError,
    NotFoundError,
    PermissionDeniedError,
)
from tiger_grpc.jobs.checkpoint import vet_checkpoint, vet_path

VOCAB, HIDDEN, HEADS, LAYERS, FFN = 49152, 8, 2, 2, 16


def config(**changes) -> dict:
    return {
        "model_type": "llama",
        "vocab_size": VOCAB,
        "hidden_size": HIDDEN,
        "intermediate_size": FFN,
        "num_hidden_layers": LAYERS,
        "num_attention_heads": HEADS,
        "num_key_value_heads": HEADS,
        "max_position_embeddings": 256,
        **changes,
    }


def weights(hidden: int = HIDDEN) -> dict[str, np.ndarray]:
    out = {"model.embed_tokens.weight": np.zeros((VOCAB, hidden), np.float32)}
    for i in range(LAYERS):
        for name in ("q_proj", "k_proj"):
            out[f"model.layers.{i}.self_attn.{name}.weight"] = np.zeros(
                (hidden, hidden), np.float32
            )
        out[f"model.layers.{i}.mlp.gate_proj.weight"] = np.zeros(
            (FFN, hidden), np.float32
        )
    return out


@pytest.fixture
def checkpoint(tmp_path: Path, default_model_dir: Path) -> Path:
    path = tmp_path / "ckpt"
    path.mkdir()
    (path / "config.json").write_text(json.dumps(config()))
    shutil.copy(default_model_dir / "hf" / "tokenizer.json", path / "tokenizer.json")
    save_file(weights(), str(path / "model.safetensors"))
    return path


def test_a_good_checkpoint_copies_only_what_was_vetted(checkpoint: Path) -> None:
    (checkpoint / "notes.txt").write_text("hello")
    (checkpoint / "pytorch_model.bin").write_bytes(b"\x80\x04 not really")
    (checkpoint / "alias.json").symlink_to(checkpoint / "config.json")
    vetted = vet_checkpoint(checkpoint)
    assert vetted.files == ("config.json", "model.safetensors", "tokenizer.json")


def test_pickle_weights_are_never_read(checkpoint: Path) -> None:
    (checkpoint / "model.safetensors").unlink()
    (checkpoint / "pytorch_model.bin").write_bytes(b"\x80\x04cos\nsystem\n")
    with pytest.raises(InvalidArgumentError, match="pickle file, which Tiger never"):
        vet_checkpoint(checkpoint)


@pytest.mark.parametrize(
    ("changes", "needle"),
    [
        ({"auto_map": {"AutoModel": "evil.Model"}}, "custom code"),
        ({"hidden_size": 10**9}, "`hidden_size` must be an integer from 1"),
        ({"num_hidden_layers": -1}, "`num_hidden_layers`"),
        ({"vocab_size": "49152"}, "`vocab_size`"),
        ({"hidden_size": 16}, "disagree with config.json"),
        ({"num_hidden_layers": 3}, "the weights have 2 layers"),
        ({"model_type": "mistral"}, "only Llama"),
    ],
)
def test_a_config_that_lies_or_is_absurd_is_refused(
    checkpoint: Path, changes, needle
) -> None:
    (checkpoint / "config.json").write_text(json.dumps(config(**changes)))
    with pytest.raises(InvalidArgumentError, match=needle):
        vet_checkpoint(checkpoint)


def test_oversized_and_unparsable_files_are_refused(checkpoint: Path) -> None:
    (checkpoint / "config.json").write_text(json.dumps(config(pad="x" * (2 << 20))))
    with pytest.raises(InvalidArgumentError, match="more than the"):
        vet_checkpoint(checkpoint)
    (checkpoint / "config.json").write_text("{not json")
    with pytest.raises(InvalidArgumentError, match="not JSON"):
        vet_checkpoint(checkpoint)


@pytest.mark.parametrize("forgery", ["header", "offsets"])
def test_forged_safetensors_headers_are_refused(checkpoint: Path, forgery) -> None:
    path = checkpoint / "model.safetensors"
    if forgery == "header":
        path.write_bytes(struct.pack("<Q", 1 << 40) + b"{}")
    else:
        header = json.dumps(
            {
                "model.embed_tokens.weight": {
                    "dtype": "F32",
                    "shape": [VOCAB, HIDDEN],
                    "data_offsets": [0, 1 << 40],
                }
            }
        ).encode()
        path.write_bytes(struct.pack("<Q", len(header)) + header)
    with pytest.raises(InvalidArgumentError, match="header of|past the end"):
        vet_checkpoint(checkpoint)


def test_a_symlink_out_of_the_checkpoint_is_refused(
    checkpoint: Path, tmp_path: Path
) -> None:
    secret = tmp_path / "secret.json"
    secret.write_text("{}")
    (checkpoint / "tokenizer_config.json").symlink_to(secret)
    with pytest.raises(InvalidArgumentError, match="symlink to outside"):
        vet_checkpoint(checkpoint)


def test_paths_out_of_the_import_roots_are_refused(tmp_path: Path) -> None:
    root = tmp_path / "imports"
    (root / "good").mkdir(parents=True)
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (root / "escape").symlink_to(outside)
    roots = (root.resolve(),)
    assert vet_path(str(root / "good"), roots) == (root / "good").resolve()
    with pytest.raises(InvalidArgumentError, match="must not contain `..`"):
        vet_path(str(root / "good" / ".." / ".." / "elsewhere"), roots)
    with pytest.raises(InvalidArgumentError, match="absolute"):
        vet_path("imports/good", roots)
    for attack in (str(outside), "/proc/self/environ", "/etc", str(root / "escape")):
        with pytest.raises(PermissionDeniedError, match="TIGER_IMPORT_ROOTS"):
            vet_path(attack, roots)
    assert vet_path("/etc", ()) == Path("/etc")  # no roots: the old rule
    for garbage in ("/tmp/a\x00b", "/tmp/\udb2a"):
        with pytest.raises(NotFoundError, match="no file here can have that path"):
            vet_path(garbage, roots)
    with pytest.raises(NotFoundError):
        vet_checkpoint(Path("/proc/self/environ"))


@pytest.mark.parametrize(
    "header",
    [
        [1, 2],
        {"x": {"dtype": "F32", "shape": [1], "data_offsets": ["0", "4"]}},
        {"x": {"dtype": "F32", "shape": 5, "data_offsets": [0, 4]}},
    ],
)
def test_malformed_headers_are_a_400_not_a_crash(checkpoint: Path, header) -> None:
    raw = json.dumps(header).encode()
    (checkpoint / "model.safetensors").write_bytes(
        struct.pack("<Q", len(raw)) + raw + b"\0" * 16
    )
    with pytest.raises(InvalidArgumentError):
        vet_checkpoint(checkpoint)


def test_a_file_swapped_for_a_link_after_vetting_is_not_copied(
    checkpoint: Path, tmp_path: Path
) -> None:
    from tiger_grpc.jobs.checkpoint import copy_vetted

    vetted = vet_checkpoint(checkpoint)
    secret = tmp_path / "secret.json"
    secret.write_text('{"secret": 1}')
    (checkpoint / "tokenizer.json").unlink()
    (checkpoint / "tokenizer.json").symlink_to(secret)  # after the vetting
    with pytest.raises(InvalidArgumentError, match="link out of the checkpoint"):
        copy_vetted(vetted, tmp_path / "store")
    assert not (tmp_path / "store" / "tokenizer.json").exists()


def write_gguf(
    path: Path,
    arch: str = "llama",
    tokenizer: bool = True,
    layers: int = LAYERS,
    extra: str | None = None,
    eos: int | str = 2,
    ffn: int = FFN,
    sampling: dict[str, float | int] | None = None,
) -> Path:
    """A small Llama GGUF file, written with gguf's own writer (random weights, a
    16-token vocabulary); the arguments spoil it one way or another."""
    import gguf

    writer = gguf.GGUFWriter(str(path), arch)
    writer.add_embedding_length(HIDDEN)
    writer.add_feed_forward_length(ffn)
    writer.add_block_count(LAYERS)
    writer.add_head_count(HEADS)
    writer.add_head_count_kv(HEADS)
    writer.add_context_length(256)
    if tokenizer:
        writer.add_tokenizer_model("gpt2")
        writer.add_token_list([f"t{i}" for i in range(16)])
        if isinstance(eos, str):  # a string where an id belongs
            writer.add_string("tokenizer.ggml.eos_token_id", eos)
        else:
            writer.add_eos_token_id(eos)
    for key, value in (sampling or {}).items():  # as llama.cpp's converter writes
        if isinstance(value, int):
            writer.add_int32(f"general.sampling.{key}", value)
        else:
            writer.add_float32(f"general.sampling.{key}", value)
    rng = np.random.default_rng(0)

    def tensor(name: str, *shape: int) -> None:
        writer.add_tensor(name, rng.standard_normal(shape, np.float32))

    tensor("token_embd.weight", 16, HIDDEN)
    tensor("output_norm.weight", HIDDEN)
    for i in range(layers):
        for norm in ("attn_norm", "ffn_norm"):
            tensor(f"blk.{i}.{norm}.weight", HIDDEN)
        for square in ("attn_q", "attn_k", "attn_v", "attn_output"):
            tensor(f"blk.{i}.{square}.weight", HIDDEN, HIDDEN)
        tensor(f"blk.{i}.ffn_gate.weight", ffn, HIDDEN)
        tensor(f"blk.{i}.ffn_up.weight", ffn, HIDDEN)
        tensor(f"blk.{i}.ffn_down.weight", HIDDEN, ffn)
    if extra:
        tensor(extra, HIDDEN)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def test_a_gguf_file_is_read_as_data_and_vetted(tmp_path) -> None:
    from tiger_grpc.jobs.gguffile import vet_source
    from tiger_grpc.jobs.importing import gguf_plan

    vetted = vet_source(write_gguf(tmp_path / "model.gguf"))
    assert vetted.config["hidden_size"] == HIDDEN and vetted.config["vocab_size"] == 16
    assert vetted.kinds == {"F32": 2 + 9 * LAYERS}
    assert "ONNX Runtime quantizes its float weights" in gguf_plan(vetted, "int4")
    assert "fp16 graph takes them dequantized" in gguf_plan(vetted, "fp16")
    k_quants = dataclasses.replace(vetted, kinds={"F32": 3, "Q4_K": 2, "Q6_K": 1})
    assert gguf_plan(k_quants, "int4").endswith(
        "the int4 graph takes its Q4_K/Q6_K blocks as they are"
    )
    assert gguf_plan(k_quants, "int4-fp16").endswith(  # int4 on CUDA
        "the int4-fp16 graph takes its Q4_K/Q6_K blocks as they are"
    )
    assert "int8-fp16 graph takes them dequantized" in gguf_plan(k_quants, "int8-fp16")
    others = dataclasses.replace(vetted, kinds={"F32": 3, "IQ2_XS": 2, "IQ3_S": 1})
    assert "ONNX Runtime quantizes them again" in gguf_plan(others, "int4")
    mixed = dataclasses.replace(vetted, kinds={"F32": 3, "Q3_K": 2, "IQ4_NL": 1})
    assert gguf_plan(mixed, "int4").endswith(
        "takes its Q3_K blocks as they are, "
        "and ONNX Runtime quantizes the rest (IQ4_NL) again"
    )
    small = dataclasses.replace(vetted, kinds={"F32": 3, "Q2_K": 2, "Q3_K": 1})
    assert gguf_plan(small, "int4").endswith("takes its Q2_K/Q3_K blocks as they are")


def test_a_gguf_files_recommended_sampling_is_read_where_in_range(tmp_path) -> None:
    """llama.cpp's `general.sampling.*` keys become the model's defaults (float32
    as written); values out of range are left out, not clamped."""
    from tiger_grpc.jobs.gguffile import vet_source
    from tiger_grpc.models.fromgguf import file_sampling, read_header

    recommended = {"temp": 0.6, "top_p": 0.95, "top_k": 20, "min_p": 0.05}
    path = write_gguf(tmp_path / "a.gguf", sampling=recommended)
    meta, _ = read_header(path)
    assert file_sampling(meta) == {"temperature": 0.6, "top_p": 0.95, "top_k": 20}
    assert vet_source(path).sampling == file_sampling(meta)  # the import says it
    wrong = {"temp": -1.0, "top_p": 1.5, "top_k": -3}
    meta, _ = read_header(write_gguf(tmp_path / "b.gguf", sampling=wrong))
    assert file_sampling(meta) == {}
    meta, _ = read_header(write_gguf(tmp_path / "c.gguf"))
    assert file_sampling(meta) == {}


def test_a_gguf_file_that_lies_is_refused_before_anything_reads_it(tmp_path) -> None:
    """Each refusal names its reason; none lets gguf's reader (which trusts every
    count) near the file."""
    from tiger_grpc.jobs.gguffile import vet_source

    whole = write_gguf(tmp_path / "model.gguf").read_bytes()
    files = {
        "only Llama-architecture checkpoints can be imported, this one is 'qwen2'": (
            write_gguf(tmp_path / "qwen.gguf", arch="qwen2")
        ),
        "carries no tokenizer": write_gguf(tmp_path / "bare.gguf", tokenizer=False),
        "blk.1.attn_norm.weight is missing": write_gguf(tmp_path / "l.gguf", layers=1),
        "holds tensors a Llama does not have: blk.0.extra.weight": write_gguf(
            tmp_path / "x.gguf", extra="blk.0.extra.weight"
        ),
        "its eos token id 99 is outside its vocabulary": write_gguf(
            tmp_path / "e.gguf", eos=99
        ),
        "its eos token id 'two' is outside its vocabulary": write_gguf(
            tmp_path / "s.gguf", eos="two"
        ),
    }
    raw = {
        "notes.gguf is not a GGUF file": b"hello",
        # The last tensor's bytes missing.
        "cut.gguf: blk.1.ffn_down.weight overlaps another tensor or lies past": (
            whole[: len(whole) - 64]
        ),
        "head.gguf: the header ends early": whole[:30],
        "weights.bin is a file: give a Hugging Face checkpoint directory or a .gguf": (
            whole
        ),
    }
    # A few bytes that claim an array of 2**40 items, then one of 2**40 strings:
    # gguf's reader loops over such counts and allocates without end.
    start = b"GGUF" + struct.pack("<IQQ", 3, 0, 1) + struct.pack("<Q", 1) + b"k"
    huge = "a value runs past the end of the file"
    raw[f"huge.gguf: {huge}"] = start + struct.pack("<IIQ", 9, 0, 1 << 40) + b"\0" * 40
    strings = "an array runs past the end of the file"
    raw[f"words.gguf: {strings}"] = (
        start + struct.pack("<IIQ", 9, 8, 1 << 40) + bytes(40)
    )
    # Two tensors over the same bytes: a file far smaller than what it declares.
    name = b"blk.0.attn_k.weight"
    at = whole.index(name) + len(name) + 4 + 2 * 8 + 4  # its data offset
    q = whole.index(b"blk.0.attn_q.weight") + len(b"blk.0.attn_q.weight") + 4 + 16 + 4
    raw["shared.gguf: blk.0.attn_"] = whole[:at] + whole[q : q + 8] + whole[at + 8 :]
    for needle, data in raw.items():
        file = tmp_path / needle.split(" ")[0].rstrip(":")
        file.write_bytes(data)
        files[needle] = file
    for needle, path in files.items():
        with pytest.raises(InvalidArgumentError, match=re.escape(needle)):
            vet_source(path)


def test_a_gguf_file_changed_after_vetting_is_not_imported(tmp_path) -> None:
    """The import works from a copy, vetted again: a file spoilt, replaced or
    swapped for a link since it was vetted is refused."""
    from tiger_grpc.jobs.gguffile import copy_gguf, vet_gguf

    path = write_gguf(tmp_path / "model.gguf")
    vetted = vet_gguf(path)
    copy = copy_gguf(vetted, tmp_path / "copy.gguf")
    assert copy.path.read_bytes() == path.read_bytes()
    write_gguf(path, layers=1)
    with pytest.raises(InvalidArgumentError, match="blk.1.attn_norm.weight is missing"):
        copy_gguf(vetted, tmp_path / "spoilt.gguf")
    write_gguf(path, ffn=32)
    with pytest.raises(InvalidArgumentError, match="changed while it was imported"):
        copy_gguf(vetted, tmp_path / "other.gguf")
    path.unlink()
    path.symlink_to(write_gguf(tmp_path / "elsewhere.gguf"))
    with pytest.raises(InvalidArgumentError, match="changed into a link or vanished"):
        copy_gguf(vetted, tmp_path / "linked.gguf")


def test_the_embedded_gguf_is_a_llama_of_exact_blocks() -> None:
    from tiger_grpc.jobs.gguffile import vet_source
    from tiger_grpc.jobs.importing import gguf_plan
    from tiger_grpc.models.embedded import find_gguf

    vetted = vet_source(find_gguf())
    assert vetted.kinds == {"F32": 61, "Q4_1": 210, "Q8_0": 1}
    assert vetted.config["num_hidden_layers"] == 30
    assert vetted.parameters == 134_515_008
    assert gguf_plan(vetted, "int4").endswith(
        "the int4 graph takes its Q4_1/Q8_0 blocks as they are"
    )
