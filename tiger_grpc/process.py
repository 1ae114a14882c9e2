"""What the server and the gateway processes share: common flags, port files, signals."""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
from collections.abc import Mapping
from pathlib import Path


def add_process_arguments(
    parser: argparse.ArgumentParser, env: Mapping[str, str]
) -> None:
    parser.add_argument(
        "--shutdown-grace",
        type=float,
        default=float(env.get("TIGER_SHUTDOWN_GRACE_S", "30")),
        help="seconds running streams get to finish on SIGTERM",
    )
    parser.add_argument(
        "--port-file", type=Path, help="write the bound port(s) here (for tests)"
    )
    parser.add_argument("--log-level", default=env.get("TIGER_LOG_LEVEL", "INFO"))
    parser.add_argument(
        "--log-format",
        choices=("text", "json"),
        default=env.get("TIGER_LOG_FORMAT", "text"),
        help="json: one object per line, for log collectors",
    )


def write_port_file(path: Path | None, *ports: int) -> None:
    """Writes the bound ports, one a line, atomically (a reader never sees half)."""
    if path is None:
        return
    tmp = path.with_suffix(".tmp")
    tmp.write_text("".join(f"{port}\n" for port in ports))
    os.replace(tmp, path)


async def until_terminated() -> None:
    """Returns on SIGINT or SIGTERM."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
