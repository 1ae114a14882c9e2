"""An import too large for the machine's memory or the store's disk is refused
before anything is converted, with what it needs and what there is."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from tiger_grpc.api.errors import InvalidArgumentError
from tiger_grpc.api.params import ImportParams
from tiger_grpc.config import Device
from tiger_grpc.jobs import room
from tiger_grpc.jobs.importing import Importer, room_needed
from tiger_grpc.jobs.room import GIB, available_memory, check_room
from tiger_grpc.models.store import ModelStore


def test_available_memory_is_what_the_kernel_says(tmp_path: Path) -> None:
    meminfo = tmp_path / "meminfo"
    meminfo.write_text(
        "MemTotal:       24683784 kB\nMemAvailable:    2097152 kB\n"
        "SwapTotal:       1048576 kB\nSwapFree:         1048576 kB\n"
    )
    assert available_memory(meminfo) == 3 * GIB
    meminfo.write_text("MemTotal:       24683784 kB\n")  # a kernel before 3.14
    assert available_memory(meminfo) is None
    assert available_memory(tmp_path / "absent") is None


def test_what_does_not_fit_is_named_with_both_figures(tmp_path: Path) -> None:
    def eight_b(dtype: str, disk_free: int) -> None:
        check_room(
            8_030_261_248, 4_920_000_000, True, dtype, tmp_path,
            memory=24 * GIB, disk_free=disk_free,
        )  # fmt: skip

    with pytest.raises(InvalidArgumentError) as memory:
        eight_b("fp32", 100 * GIB)
    said = str(memory.value)
    assert "8.03B-parameter model needs at least 119.7 GiB of memory" in said
    assert "this machine has 24.0 GiB available" in said
    # Exported in fp16 on a GPU, the host holds far less: this one fits in memory,
    # and on a disk with 100 GiB free, but not on one with 40.
    eight_b("fp16", 100 * GIB)
    with pytest.raises(InvalidArgumentError) as short:
        eight_b("fp16", 40 * GIB)
    assert "needs at least 49.5 GiB of disk" in str(short.value)
    assert "40.0 GiB is free there" in str(short.value)
    # Without a figure given, the store's own file system is asked.
    huge = 10**15  # no disk has room for it; memory is not what stops it here
    with pytest.raises(InvalidArgumentError, match="GiB of disk under") as disk:
        check_room(huge, 0, False, "fp16", tmp_path, memory=10**18)
    assert "is free there" in str(disk.value)


def test_the_embedded_gguf_is_judged_by_its_size(tmp_path: Path) -> None:
    from tiger_grpc.jobs.gguffile import vet_source
    from tiger_grpc.models.embedded import find_gguf

    vetted = vet_source(find_gguf())
    parameters, size, gguf, dtype = room_needed(vetted, Device.CPU)
    assert (parameters, gguf, dtype) == (134_515_008, True, "fp32")
    assert size == find_gguf().stat().st_size


def test_an_import_without_the_memory_is_refused_and_leaves_nothing(
    tmp_path: Path, monkeypatch
) -> None:
    """Through the importer the server runs: refused before the stream starts (a 400
    over HTTP), nothing in the store, and the next import is not held up."""
    from tiger_grpc.models.embedded import find_gguf

    monkeypatch.setattr(room, "available_memory", lambda: GIB)
    store = ModelStore(tmp_path / "home")
    importer = Importer(store, Device.CPU)
    params = ImportParams(path=str(find_gguf()), id="too-big-here")

    async def attempt() -> None:
        async for _ in importer.import_model(params):
            pytest.fail("the import started")

    for _ in range(2):  # the second is refused the same way, not as "busy"
        with pytest.raises(InvalidArgumentError, match="needs at least 2.0 GiB"):
            asyncio.run(attempt())
    assert list(store.models_dir.iterdir()) == []
