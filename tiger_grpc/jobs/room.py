"""Whether this machine has the memory and the disk an import needs, judged from the
checkpoint's size before anything is converted.

An import holds the weights several times over: transformers' float32 model, then
optimum's export of it (the model, the traced graph and its serialized copy). A
model too large for the machine would otherwise run until the kernel's OOM killer
stops the server, and every model it serves with it; or fill the store's disk.
Both checks are lower bounds of what was measured, so that an import they pass
may still fail (and leave nothing behind), but one they refuse could never end.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from ..api.errors import InvalidArgumentError

# Memory an import takes per parameter, in bytes, above the libraries' own. Measured
# on 2 CPU cores, peak resident size: the embedded 134.5M-parameter GGUF 2,956 MiB
# (20.5 bytes a parameter), a 320.9M-parameter safetensors checkpoint 6,069 MiB
# (18.8), the libraries alone 317 MiB. With the optimum export on a GPU, fp16, the
# weights pass through host memory at least once.
CPU_EXPORT_BYTES = 16
GPU_EXPORT_BYTES = 2
# Disk per parameter: the Hugging Face weights a GGUF file is converted into are
# float32, and the optimum export is float32 (fp16 on a GPU); besides them the
# source is copied and the fused graph written (measured in all: 9.3 bytes a
# parameter for the 320.9M checkpoint, 10.5 with the GGUF's copy for the 135M).
FLOAT32, FLOAT16 = 4, 2
GIB = 2**30


def available_memory(meminfo: Path = Path("/proc/meminfo")) -> int | None:
    """Bytes this machine can still give a process (available memory and free
    swap), or None where the kernel does not say (not Linux)."""
    try:
        lines = meminfo.read_text().splitlines()
    except OSError:
        return None
    fields = {}
    for line in lines:
        name, _, value = line.partition(":")
        parts = value.split()
        if parts and parts[0].isdigit():
            fields[name] = int(parts[0]) * 1024  # kB
    if "MemAvailable" not in fields:
        return None
    return fields["MemAvailable"] + fields.get("SwapFree", 0)


def check_room(
    parameters: int,
    source_bytes: int,
    from_gguf: bool,
    export_dtype: str,
    store_root: Path,
    memory: int | None = None,
    disk_free: int | None = None,
) -> None:
    """An `InvalidArgumentError` saying what is short when an import of
    `parameters` (exported in `export_dtype`, its source `source_bytes` long) cannot
    fit in the memory (`memory`, else what the machine has) or under `store_root`
    (`disk_free`, else what its file system has free)."""
    gpu = export_dtype == "fp16"
    need = parameters * (GPU_EXPORT_BYTES if gpu else CPU_EXPORT_BYTES)
    have = available_memory() if memory is None else memory
    size = f"{parameters / 1e9:.2f}B-parameter model"
    if have is not None and need > have:
        raise InvalidArgumentError(
            f"importing this {size} needs at least {need / GIB:.1f} GiB of memory "
            f"(its weights several times over, in float32, while it is converted "
            f"and exported), and this machine has {have / GIB:.1f} GiB available: "
            "import it on a larger machine and copy the model's directory into "
            "this store (TIGER_HOME/models/<id>)"
        )
    export = FLOAT16 if gpu else FLOAT32
    disk = source_bytes + parameters * ((FLOAT32 if from_gguf else 0) + export)
    free = shutil.disk_usage(store_root).free if disk_free is None else disk_free
    if disk > free:
        raise InvalidArgumentError(
            f"importing this {size} needs at least {disk / GIB:.1f} GiB of disk "
            f"under {store_root} (the copied source and float weights, and the "
            f"ONNX export), and {free / GIB:.1f} GiB is free there"
        )
