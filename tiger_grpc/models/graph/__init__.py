"""The fused graph: a Llama decoder for ONNX Runtime, int8, int4, fp16 or fp32.

Built from the same HF weights as the optimum export, with ONNX Runtime's fused
contrib ops: `GroupQueryAttention` (rotary embedding inside, and a KV cache that is
updated in place in a fixed-size buffer, so no step copies the cache), packed QKV
and gate/up projections, `SkipSimplifiedLayerNormalization`, and logits for the last
position only. For the CPU graphs the projections and the LM head are `MatMulNBits`
with int8 or int4 blocks, quantized by ORT's own kernels (what its `MatMulNBits`
quantizer does), or, for int4 from a GGUF file, that file's own Q4_0/Q4_1/Q8_0
blocks as they are (`gguf`); fp16 is the CUDA graph, where weights, activations
and the KV cache are fp16. This is the graph shape of onnxruntime-genai's builder.

`llama` writes the decoder (its inputs and outputs are described there), `writer`
the ONNX file, `tensors` reads the weights, `shape` the config.

Weights are read, quantized and written to the external data file one tensor at a
time as the graph is built, so an 8B checkpoint never sits in memory (measured: the
8B shape in fp16, 16 GB of weights, builds in 2.5 min with 3.5 GB resident).
"""

from .llama import build_fused_graph, build_fused_llama
from .shape import LlamaShape
from .tensors import random_tensors

__all__ = ["LlamaShape", "build_fused_graph", "build_fused_llama", "random_tensors"]
