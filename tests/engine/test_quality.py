"""The fused graphs of the embedded model against its fp32 optimum export.

Teacher-forced next-token predictions on a fixed English text. Stated tolerances:
fp16 (the CUDA graph, here run by ORT's CPU kernels) keeps top-1 agreement >= 97%
and perplexity within 1% (measured: 100%, +0.0%); int8 keeps top-1 agreement
>= 85% and perplexity within 5% of fp32 (measured: 93%, +0.8%); int4, faster
but re-quantizing the GGUF's Q4_1 weights onto ORT's grid, keeps agreement
>= 60% and perplexity within 15% (measured: 73%, +0.3%).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tiger_grpc.config import Device
from tiger_grpc.engine.fused import FusedCausalLM
from tiger_grpc.engine.optimum import OnnxCausalLM
from tiger_grpc.models.embedded import DEFAULT_MODEL_ID
from tiger_grpc.models.pipeline import add_graph
from tiger_grpc.models.store import ModelManifest, ModelStore

TEXT = (
    "The water cycle describes how water moves between the oceans, the air and the "
    "land. Heat from the sun evaporates water from the surface of the sea. The vapour "
    "rises, cools and condenses into clouds. When the droplets in a cloud grow heavy "
    "enough, they fall as rain or snow. Rivers carry much of that water back to the "
    "sea, while some of it soaks into the ground and feeds springs and wells. Plants "
    "also return water to the air through their leaves, and the cycle begins again."
)
TOLERANCES = {"fp16": (0.97, 1.01), "int8": (0.85, 1.05), "int4": (0.60, 1.15)}


def log_softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))


def perplexity(logits: np.ndarray, targets: list[int]) -> float:
    logp = log_softmax(logits)
    return float(np.exp(-logp[np.arange(len(targets)), targets].mean()))


@pytest.fixture(scope="module")
def ids(tokenizer) -> list[int]:
    return tokenizer(TEXT)["input_ids"]


@pytest.fixture(scope="module")
def fp32_logits(default_model_dir: Path, ids: list[int]) -> np.ndarray:
    manifest = ModelManifest.read(default_model_dir)
    model = OnnxCausalLM(default_model_dir / manifest.onnx_path, Device.CPU)
    cache, rows = model.empty_cache(), []
    for token in ids[:-1]:
        logits, cache = model.forward([token], cache)
        rows.append(logits)
    return np.stack(rows)


@pytest.mark.parametrize("precision", ["fp16", "int8", "int4"])
def test_quantized_predictions_stay_close_to_fp32(
    precision: str, default_model_dir: Path, ids: list[int], fp32_logits: np.ndarray
) -> None:
    store = ModelStore(default_model_dir.parent.parent)
    manifest = store.get(DEFAULT_MODEL_ID)
    assert manifest is not None
    if precision not in manifest.fused_graphs:
        with store.lock(DEFAULT_MODEL_ID):
            manifest = add_graph(store, DEFAULT_MODEL_ID, precision)
    model = FusedCausalLM(
        default_model_dir / manifest.fused_graphs[precision], Device.CPU, 1, 512
    )
    rows = [model.prefill(0, ids[:1])]
    rows += [model.decode([t], [i])[0] for i, t in enumerate(ids[1:-1], start=1)]
    quantized = np.stack(rows)
    agreement = float((quantized.argmax(-1) == fp32_logits.argmax(-1)).mean())
    ratio = perplexity(quantized, ids[1:]) / perplexity(fp32_logits, ids[1:])
    min_agreement, max_ratio = TOLERANCES[precision]
    print(f"{precision}: top-1 agreement {agreement:.1%}, perplexity ratio {ratio:.3f}")
    assert agreement >= min_agreement
    assert ratio <= max_ratio
