"""Same-shaped buffers on the session's device (host memory on CPU, GPU memory on
CUDA), carved out of one allocation, and device-side copies between them: a tiny
graph of `Pad` nodes run with IO binding, so CPU and CUDA share the code."""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import numpy as np
import onnxruntime as ort
from onnx import TensorProto, helper

log = logging.getLogger(__name__)

_ONNX = {
    np.float32: TensorProto.FLOAT,
    np.float16: TensorProto.FLOAT16,
    np.int8: TensorProto.INT8,
}
# A graph's cache input type (as ORT names it) -> its numpy type; int8 is
# int4-kv8's (`models.graph.kvcache`).
CACHE_TYPES = {
    "tensor(float)": np.float32,
    "tensor(float16)": np.float16,
    "tensor(int8)": np.int8,
}
ALIGN = 256  # bytes between buffers carved out of one allocation


@dataclass
class Block:
    """Same-shaped buffers carved out of one device allocation."""

    value: ort.OrtValue  # owns the memory
    addresses: list[int]  # where each buffer starts


class DeviceBuffers:
    """Same-shaped buffers on one device, and device-side copies between them.

    The copies are a graph of one `Pad` per buffer (pads of zero copy), run with IO
    binding so that inputs and outputs are addresses in device memory.
    """

    def __init__(
        self,
        count: int,
        dtype: type,
        providers: list[str],
        device_type: str,
        device_id: int = 0,
    ) -> None:
        self.count, self.dtype = count, dtype
        self.device_type, self.device_id = device_type, device_id
        self.itemsize = np.dtype(dtype).itemsize
        dims = ["d0", "d1", "d2", "d3"]
        nodes = [
            helper.make_node("Pad", [f"x{i}", "pads"], [f"y{i}"], mode="constant")
            for i in range(count)
        ]
        graph = helper.make_graph(
            nodes,
            "tiger-device-copy",
            [
                *(
                    helper.make_tensor_value_info(f"x{i}", _ONNX[dtype], dims)
                    for i in range(count)
                ),
                helper.make_tensor_value_info("pads", TensorProto.INT64, [8]),
            ],
            [
                helper.make_tensor_value_info(f"y{i}", _ONNX[dtype], None)
                for i in range(count)
            ],
        )
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])
        model.ir_version = 10
        options = ort.SessionOptions()
        options.log_severity_level = 3
        self._session = ort.InferenceSession(
            model.SerializeToString(), options, providers=providers
        )

    def allocate(self, shape: tuple[int, ...], zero: bool = True) -> Block:
        """`count` new buffers of `shape`, in one allocation (on CUDA, ORT's arena
        grows in doubling regions: one exact request reserves what it asks for, many
        would leave the last region part empty), zeroed unless told otherwise."""
        stride = -(-math.prod(shape) * self.itemsize // ALIGN) * ALIGN
        value = ort.OrtValue.ortvalue_from_shape_and_type(
            [stride * self.count // self.itemsize],
            self.dtype,
            self.device_type,
            self.device_id,
        )
        base = value.data_ptr()
        block = Block(value, [base + i * stride for i in range(self.count)])
        if not zero:
            return block
        empty = (*shape[:2], 0, *shape[3:])
        pads = [0, 0, 0, 0, 0, 0, shape[2], 0]
        # Padding an empty tensor out to the full shape writes zeros (it also faults
        # the host pages in now, not in the middle of a step).
        try:
            self.copy(block.addresses, empty, block.addresses, shape, pads)
        except Exception as exc:
            if self.device_type != "cpu":  # no host copy the size of the cache
                raise RuntimeError(
                    f"zeroing the KV cache on the device failed: {exc}"
                ) from exc
            log.warning("zeroing the KV cache failed (%s): zeros from numpy", exc)
            value.update_inplace(np.zeros(value.shape(), self.dtype))
        return block

    def copy(
        self,
        sources: list[int],
        source_shape: tuple[int, ...],
        targets: list[int],
        target_shape: tuple[int, ...],
        pads: list[int] | None = None,
    ) -> None:
        """Copies each source block into its target, zero-padding the difference."""
        binding = self._session.io_binding()
        for i, (src, dst) in enumerate(zip(sources, targets, strict=True)):
            binding.bind_input(
                f"x{i}",
                self.device_type,
                self.device_id,
                self.dtype,
                list(source_shape),
                src,
            )
            binding.bind_output(
                f"y{i}",
                self.device_type,
                self.device_id,
                self.dtype,
                list(target_shape),
                dst,
            )
        binding.bind_cpu_input("pads", np.asarray(pads or [0] * 8, np.int64))
        self._session.run_with_iobinding(binding)
