"""How `MatMulNBits` takes its activations: as int8 (accuracy_level 4, ORT's fast
path on CPU, as llama.cpp quantizes its activations), or as they are (level 1)
where int8 rounds worst and the float path is cheap."""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

ACCURACY_LEVEL = 4
# Float activations for the down projections of the last tenth of the layers,
# whose inputs carry the largest outliers. Measured on the embedded model's default
# graph on an AVX2 CPU (AMD EPYC), over the 2,238 held-out tokens against fp32:
# top-1 agreement 96.74% -> 97.50% and KL 0.0026 -> 0.0023 with the last 3 layers
# (the last 5 or 8: 97.50-97.54%; all 30: 97.10%, at +1.0-1.7 ms a step), about
# 0.05 ms a step per layer.
FLOAT_INPUT_LAYERS = 0.1
FLOAT_ACCURACY_LEVEL = 1
# ...only where that is cheap: down projections at most this wide. On 2 cores a
# 4-bit down projection's float path cost +0.05 ms at the embedded model's 1,536
# inputs (0.06 -> 0.10 ms), but +1.15 ms at the 1B shape's 5,632 (0.28 -> 1.43 ms:
# 7% of a one-stream step for its 2 layers; +2.3 ms each at 8 streams). Wider
# models keep int8 activations everywhere, as llama.cpp's.
FLOAT_INPUT_MAX_WIDTH = 2048


def down_accuracy(layer: int, layers: int, width: int) -> int:
    """The accuracy_level of layer `layer`'s down projection (of `layers`, taking
    `width` inputs)."""
    last = layers - math.ceil(layers * FLOAT_INPUT_LAYERS)
    if layer >= last and width <= FLOAT_INPUT_MAX_WIDTH:
        return FLOAT_ACCURACY_LEVEL
    return ACCURACY_LEVEL


def node_accuracy(bits: int, wanted: int) -> int:
    """The accuracy_level a `MatMulNBits` of `bits`-bit blocks gets when `wanted`:
    8-bit blocks always take int8 activations, as ORT's CPU kernels have no fast
    float path for them (an 8-bit 2048 x 5632 product: 0.40 ms at level 4, 44 ms
    at level 1; the embedded model's down projection shape: 0.04 and 1.5 ms)."""
    return ACCURACY_LEVEL if bits == 8 else wanted


def wanted_accuracy(node: Any, layers: int) -> int:
    """The accuracy_level the rules above give a `MatMulNBits` node of a fused
    graph with `layers` layers, from its name (`layers.<i>.down_proj`, with a
    `.<j>` suffix where the projection's blocks take several nodes) and its
    attributes (`bits`, `K`)."""
    attributes = {a.name: a.i for a in node.attribute}
    parts = node.name.split(".")
    wanted = ACCURACY_LEVEL
    if len(parts) >= 3 and parts[0] == "layers" and parts[2] == "down_proj":
        wanted = down_accuracy(int(parts[1]), layers, attributes["K"])
    return node_accuracy(attributes["bits"], wanted)


def mend_accuracy(onnx_path: Path) -> int:
    """Brings a fused graph written by an earlier version to these rules, in place
    (the graph file only: its weights are not touched), and returns how many nodes
    changed. A store built before 8-bit blocks were kept off the float path holds
    graphs whose K-quant imports decode 4 times slower (a 1B Q4_K_M: 6 tokens/s
    against 24); they are mended when they load, instead of rebuilt."""
    import onnx

    model = onnx.load(str(onnx_path), load_external_data=False)
    nodes = list(model.graph.node)
    layers = sum(n.op_type == "GroupQueryAttention" for n in nodes)
    changed = 0
    for node in nodes:
        if node.op_type != "MatMulNBits":
            continue
        level = next((a for a in node.attribute if a.name == "accuracy_level"), None)
        if level is None:  # not one this builder wrote
            continue
        wanted = wanted_accuracy(node, layers)
        if level.i != wanted:
            level.i, changed = wanted, changed + 1
    if changed:
        written = onnx_path.with_name(onnx_path.name + ".mending")
        try:
            onnx.save_model(model, str(written))
            os.replace(written, onnx_path)  # whole, for a process loading it
        finally:
            written.unlink(missing_ok=True)
    return changed
