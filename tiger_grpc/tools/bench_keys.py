"""What key checks cost: a burst of requests against Tiger with one key
(`TIGER_API_KEY`), then against Tiger with a key file of 1,000 keys, the one used
carrying all three limits (so every call is looked up, authorized and counted).
Each setup runs alone; the burst is the model list (the cheapest call, where the
check weighs most) over gRPC straight to the server and over HTTP through the
gateway, 32 at a time for a few seconds, after a warm-up.

Run alone: `python -m tiger_grpc.tools.bench_keys`.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
import grpc

from ..api.keys import add_key, entry
from ..config import default_home
from ..pb.tiger.v1 import tiger_pb2 as pb
from ..pb.tiger.v1 import tiger_pb2_grpc as pb_grpc
from .bench_report import target_lines
from .stack import API_KEY, served

CONCURRENCY = 32


async def _burst(send: Any, seconds: float) -> float:
    """Requests per second of `send()` called by CONCURRENCY workers."""
    done = 0
    deadline = time.perf_counter() + seconds

    async def worker() -> None:
        nonlocal done
        while time.perf_counter() < deadline:
            await send()
            done += 1

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))
    return done / (time.perf_counter() - start)


async def _measure(target: str, http_port: int, key: str, seconds: float) -> dict:
    metadata = (("authorization", f"Bearer {key}"),)
    headers = {"Authorization": f"Bearer {key}"}
    url = f"http://127.0.0.1:{http_port}/v1/models"
    async with grpc.aio.insecure_channel(target) as channel:
        stub = pb_grpc.TigerStub(channel)

        async def rpc() -> None:
            await stub.ListModels(pb.ListModelsRequest(), metadata=metadata)

        await _burst(rpc, 1.0)  # warm
        grpc_rps = await _burst(rpc, seconds)
    async with aiohttp.ClientSession(headers=headers) as session:

        async def http() -> None:
            async with session.get(url) as reply:
                reply.raise_for_status()
                await reply.read()

        await _burst(http, 1.0)
        http_rps = await _burst(http, seconds)
    return {"grpc_rps": grpc_rps, "http_rps": http_rps}


def key_file(directory: Path, count: int = 1000) -> tuple[Path, str]:
    """A key file of `count` keys; returns it and the (limited) key used."""
    path = directory / "keys.toml"
    path.write_text(
        "".join(
            entry(f"tenant-{i}", f"not-used-{i}", ["generate"])
            for i in range(count - 1)
        )
    )
    key = add_key(
        path,
        "bench",
        ["generate"],
        requests_per_minute=10**9,
        tokens_per_minute=10**12,
        max_concurrent=10**6,
    )
    return path, key


def measure(home: Path, seconds: float = 4.0) -> dict[str, Any]:
    rows: dict[str, Any] = {}
    with served(home) as (target, port):
        rows["one key"] = asyncio.run(_measure(target, port, API_KEY, seconds))
    directory = Path(tempfile.mkdtemp(prefix="tiger-keys-"))
    path, key = key_file(directory)
    with served(home, TIGER_KEYS_FILE=str(path), TIGER_API_KEY="") as (target, port):
        rows["key file, 1,000 keys, limits"] = asyncio.run(
            _measure(target, port, key, seconds)
        )
    return rows


def targets(rows: dict[str, Any]) -> list[tuple[str, float, str, bool]]:
    one, many = rows["one key"], rows["key file, 1,000 keys, limits"]
    found = []
    for field, what in (("grpc_rps", "gRPC"), ("http_rps", "HTTP")):
        ratio = many[field] / one[field]
        found.append((f"{what} model list rps: key file / one key", ratio, "~1", True))
    return found


def markdown(rows: dict[str, Any]) -> str:
    lines = [
        f"Key checks: a burst of model-list calls, {CONCURRENCY} at a time, each "
        "setup alone",
        "",
        "| setup | gRPC req/s | HTTP req/s |",
        "|---|---:|---:|",
        *(
            f"| {name} | {r['grpc_rps']:.0f} | {r['http_rps']:.0f} |"
            for name, r in rows.items()
        ),
    ]
    return "\n".join([*lines, *target_lines(targets(rows))]) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=4.0)
    args = parser.parse_args()
    print(markdown(measure(default_home(), args.seconds)))


if __name__ == "__main__":
    main()
