"""Writing an ONNX graph whose weights stream into its external data file as they
come (page-aligned, so ORT can map them), quantized on the way when asked."""

from __future__ import annotations

from typing import Any, BinaryIO

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

BLOCK_SIZE = 32
_INLINE_BYTES = 1024  # smaller initializers stay inside the graph file


class GraphWriter:
    """A small helper over onnx.helper that names things and streams initializers
    into the external data file as they come."""

    def __init__(self, data: BinaryIO, location: str) -> None:
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self._count = 0
        self._data = data
        self._location = location

    def weight(self, name: str, array: np.ndarray) -> str:
        array = np.ascontiguousarray(array)
        if array.nbytes < _INLINE_BYTES:
            self.initializers.append(numpy_helper.from_array(array, name))
            return name
        tensor = TensorProto(
            name=name,
            dims=array.shape,
            data_type=helper.np_dtype_to_tensor_dtype(array.dtype),
        )
        offset = self._data.seek(0, 2)
        padding = -offset % 4096  # page-aligned, so ORT can map the weights
        self._data.write(b"\0" * padding)
        self._data.write(memoryview(array).cast("B"))
        for key, value in (
            ("location", self._location),
            ("offset", str(offset + padding)),
            ("length", str(array.nbytes)),
        ):
            tensor.external_data.add(key=key, value=value)
        tensor.data_location = TensorProto.EXTERNAL
        self.initializers.append(tensor)
        return name

    def op(
        self,
        op_type: str,
        inputs: list[str],
        n_out: int = 1,
        domain: str = "",
        name: str | None = None,
        **attrs: Any,
    ) -> list[str]:
        self._count += 1
        node_name = name or f"{op_type}_{self._count}"
        outputs = [f"{node_name}/out{i}" for i in range(n_out)]
        self.nodes.append(
            helper.make_node(
                op_type, inputs, outputs, name=node_name, domain=domain or None, **attrs
            )
        )
        return outputs


def quantize_blocks(weight: np.ndarray, bits: int) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric blockwise quantization of a (K, N) weight along K, blocks of 32,
    with ORT's own kernels (what its `MatMulNBits` quantizer does): the packed
    blocks (N, K/32, 32*bits/8) uint8 and the scales (N, K/32)."""
    from onnxruntime.capi._pybind_state import (
        quantize_matmul_4bits,
        quantize_matmul_8bits,
    )

    weight = np.ascontiguousarray(weight, dtype=np.float32)
    rows, cols = weight.shape
    blocks = -(-rows // BLOCK_SIZE)
    if blocks * BLOCK_SIZE != rows:
        weight = np.pad(weight, ((0, blocks * BLOCK_SIZE - rows), (0, 0)))
    packed = np.zeros((cols, blocks, BLOCK_SIZE * bits // 8), np.uint8)
    zero_points = np.zeros((cols, -(-blocks * bits // 8)), np.uint8)  # unused
    scales = np.zeros((cols, blocks), np.float32)
    kernel = {4: quantize_matmul_4bits, 8: quantize_matmul_8bits}[bits]
    kernel(packed, weight, scales, zero_points, BLOCK_SIZE, cols, rows, True)
    return packed, scales
