"""An int8 KV cache for the CPU graphs, its scales calibrated when the graph is
built.

ORT's CPU `GroupQueryAttention` keeps its cache in a type of its own (`T_CACHE`)
whatever the activations' type: here int8, with a static scale per channel (one per
KV head and head dimension, `k_scale`/`v_scale`). A value x is stored as
round(x / scale), clamped to [-128, 127], and read back as q * scale. The graph is
first written with a float32 cache; it then runs over a fixed text shipped with the
package (`calibration.txt`: prose, a letter, code, SQL, lists, dialogue; never the
held-out text the quality is measured on), as it is and as chat turns in the
model's own template (the system prompt and turn markers the server always feeds),
and each channel's scale is the largest |x| it saw there times `MARGIN`, over 127;
for keys, the largest norm of the channel's rotary pair, since a key's channels
rotate with its position: the text's 2,289 positions would not show what position
6,000 rotates a slow pair to (measured on the embedded model past 4,000 positions,
against the float cache: per-channel maxima gave top-1 agreement 86.2% and KL
0.214, pair norms 97.2% and 0.015). Then the cache's inputs and outputs are
retyped to int8 and the attention nodes given their scales: the weights' file is
not touched.

A quarter of the float32 cache's bytes: 11.5 KB a token for the embedded model
instead of 46, and a step reads a quarter of the bytes at long contexts.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

CALIBRATION = Path(__file__).parents[1] / "calibration.txt"
INT8_CACHE = "int8 KV cache"  # the manifest's words for it
# Headroom over the largest value calibration saw, per channel. Keys are bounded
# by their rotary pairs' norms (`rotary_norms`), whatever the position; measured on
# the embedded model, margins of 1.0 and 1.25 gave KL 0.0037 and 0.0044 on the
# held-out text, and the same agreement with the float cache past 4,000 positions.
MARGIN = 1.0
CHUNK = 512  # positions written per calibration run
_QMAX = 127.0
_TURNS = 3  # paragraphs per chat conversation


def with_int8_cache(quantization: str) -> str:
    """The manifest's record of a graph's weights (`quantization`) and int8 cache."""
    return f"{quantization}; {INT8_CACHE}"


def calibration_sequences(hf_dir: Path, longest: int) -> list[list[int]]:
    """The calibration text's token ids, as one sequence, and as chat
    conversations in the model's template where it has one (each at most
    `longest` tokens)."""
    from ...engine.chat import load_chat_tokenizer

    tokenizer = load_chat_tokenizer(hf_dir)
    text = CALIBRATION.read_text()
    sequences = [list(tokenizer.encode(text))]
    paragraphs = [p.strip() for p in text.split("\n\n") if p.strip()]
    for start in range(0, len(paragraphs) - 1, 2 * _TURNS):
        turns = paragraphs[start : start + 2 * _TURNS]
        conversation = [
            {"role": "user" if i % 2 == 0 else "assistant", "content": p}
            for i, p in enumerate(turns)
        ]
        try:
            ids = tokenizer.apply_chat_template(conversation)
        except Exception:  # no template, or one that refuses these turns
            break
        sequences.append([int(i) for i in ids])
    return [s[:longest] for s in sequences if len(s) > 1]


def cache_maxima(
    onnx_path: Path, sequences: list[list[int]]
) -> tuple[np.ndarray, np.ndarray]:
    """The largest |value| each channel of each layer's key and value cache holds
    over `sequences` (each run from position 0, `CHUNK` positions a run), as
    (layers, kv_heads * head_dim) arrays."""
    import onnxruntime as ort

    from ...engine.providers import session_options

    session = ort.InferenceSession(
        str(onnx_path), session_options(), providers=["CPUExecutionProvider"]
    )
    past = [i for i in session.get_inputs() if i.name.startswith("past_key_values.")]
    names = [o.name for o in session.get_outputs() if o.name.startswith("present.")]
    _, heads, _, dim = past[0].shape
    largest = np.zeros((len(past), heads, dim), np.float32)
    for ids in sequences:
        cache = [np.zeros((1, heads, len(ids), dim), np.float32) for _ in past]
        for start in range(0, len(ids), CHUNK):
            chunk = ids[start : start + CHUNK]
            end = start + len(chunk)
            feeds = {
                "input_ids": np.asarray([chunk], np.int64),
                "seqlens_k": np.array([end - 1], np.int32),
                "total_sequence_length": np.array(end, np.int32),
                **{p.name: c for p, c in zip(past, cache, strict=True)},
            }
            cache = session.run(names, feeds)
            for i, present in enumerate(cache):
                written = present[0, :, start:end]
                if i % 2 == 0:  # a key: what any position can rotate it to
                    written = rotary_norms(written)
                seen = np.abs(written).max(axis=1)
                np.maximum(largest[i], seen, out=largest[i])
    flat = largest.reshape(len(past) // 2, 2, heads * dim)
    return flat[:, 0], flat[:, 1]


def rotary_norms(keys: np.ndarray) -> np.ndarray:
    """Each key channel's rotary pair's norm, for both channels of the pair
    (`rotary_interleaved=0`: channel d pairs with d + head_dim / 2): a key at
    position p is its content rotated by p times the pair's frequency, so a channel
    holds anything up to that norm, at any position, whatever positions the
    calibration saw."""
    half = keys.shape[-1] // 2
    norms = np.hypot(keys[..., :half], keys[..., half:])
    return np.concatenate([norms, norms], axis=-1)


def quantize_cache(onnx_path: Path, key_max: np.ndarray, value_max: np.ndarray) -> None:
    """Rewrites the graph at `onnx_path` (in place; its weights' file untouched)
    with an int8 cache whose scales are `MARGIN` times the maxima, over 127."""
    model = onnx.load(str(onnx_path), load_external_data=False)
    graph = model.graph
    for value in [*graph.input, *graph.output]:
        if value.name.startswith(("past_key_values.", "present.")):
            value.type.tensor_type.elem_type = TensorProto.INT8
    attention = [n for n in graph.node if n.op_type == "GroupQueryAttention"]
    assert len(attention) == len(key_max), (len(attention), key_max.shape)
    for i, node in enumerate(attention):
        scales = []
        for kind, largest in (("key", key_max[i]), ("value", value_max[i])):
            # A channel that never moved keeps a scale that cannot divide by zero.
            scale = np.maximum(largest, 1e-6) * (MARGIN / _QMAX)
            name = f"layers.{i}.attn.{kind}_scale"
            graph.initializer.append(
                numpy_helper.from_array(scale.astype(np.float32), name)
            )
            scales.append(name)
        inputs = list(node.input)
        inputs += [""] * (12 - len(inputs))  # position ids, bias, head sink: none
        del node.input[:]
        node.input.extend([*inputs[:12], *scales])
        node.attribute.extend(
            [
                helper.make_attribute("kv_cache_bit_width", 8),
                helper.make_attribute("k_quant_type", "PER_CHANNEL"),
                helper.make_attribute("v_quant_type", "PER_CHANNEL"),
            ]
        )
    onnx.save_model(model, str(onnx_path))


def int8_cache(onnx_path: Path, hf_dir: Path, longest: int) -> None:
    """Calibrates the float32-cache graph at `onnx_path` on the calibration text
    (tokenized with `hf_dir`'s tokenizer, sequences of at most `longest` tokens)
    and rewrites it with an int8 cache."""
    sequences = calibration_sequences(hf_dir, longest)
    quantize_cache(onnx_path, *cache_maxima(onnx_path, sequences))
