"""Tiger's server and gateway on free local ports, for the tools that measure or
check them over the network (`make bench`, serve-check)."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ..runtime.process import Process, start_process

API_KEY = "bench-key"


@contextlib.contextmanager
def served(home: Path, *args: Any, **env: Any) -> Iterator[tuple[str, int]]:
    """`served_processes` (the same arguments), yielding the server's gRPC target
    and the gateway's port."""
    with served_processes(home, *args, **env) as (server, gateway):
        yield f"127.0.0.1:{server.port}", gateway.port


@contextlib.contextmanager
def served_processes(
    home: Path,
    workdir: Path | None = None,
    server_args: tuple[str, ...] = (),
    log_level: str = "WARNING",
    **env: str,
) -> Iterator[tuple[Process, Process]]:
    """Tiger's server (with `server_args`) and gateway on free local ports, with
    the bench's key (and `env` set), their logs in `workdir` (a new temporary
    directory if None): yields their processes."""
    workdir = workdir or Path(tempfile.mkdtemp(prefix="tiger-bench-"))
    workdir.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "TIGER_HOME": str(home), "TIGER_API_KEY": API_KEY, **env}
    local = ["--port", "0", "--host", "127.0.0.1", "--log-level", log_level]
    args = ["tiger_grpc.server", *local, "--metrics-port", "-1", *server_args]
    server = start_process(args, workdir, "server", env)
    try:
        target = f"127.0.0.1:{server.port}"
        gateway = start_process(
            ["gateway.main", *local, "--grpc-target", target], workdir, "gateway", env
        )
        try:
            yield server, gateway
        finally:
            gateway.stop(timeout=30)
    finally:
        server.stop(timeout=30)
