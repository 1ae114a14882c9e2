"""What the server and the gateway processes share (common flags, port files,
signals), and the one way to start either and wait until it listens."""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
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


@dataclass
class Process:
    """A Tiger process started by `start_process`, and the ports it bound."""

    popen: subprocess.Popen[bytes]
    ports: list[int]
    log: Path

    @property
    def port(self) -> int:
        return self.ports[0]

    @property
    def metrics_port(self) -> int:
        return self.ports[1] if len(self.ports) > 1 else 0

    def stop(self, timeout: float = 20.0) -> None:
        """SIGTERM, then SIGKILL if it has not ended within `timeout`."""
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()


def start_process(
    args: Sequence[str],
    workdir: Path,
    name: str,
    env: Mapping[str, str],
    cwd: Path | None = None,
    timeout: float = 120.0,
) -> Process:
    """Runs `python -m <args> --port-file ...` (the server or the gateway, with
    `--port 0`), its output in `workdir/<name>.log`, and waits for the ports it
    bound: no bind-close-reuse race."""
    port_file = workdir / f"{name}.port"
    port_file.unlink(missing_ok=True)
    log = workdir / f"{name}.log"
    with log.open("wb") as out:
        popen = subprocess.Popen(
            [sys.executable, "-m", *args, "--port-file", str(port_file)],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=dict(env),
            cwd=cwd,
        )
    deadline = time.monotonic() + timeout
    while not port_file.exists():
        if popen.poll() is not None or time.monotonic() > deadline:
            popen.kill()
            popen.wait()
            raise RuntimeError(f"{name} did not start:\n{log.read_text()[-3000:]}")
        time.sleep(0.05)
    return Process(popen, [int(p) for p in port_file.read_text().split()], log)
