"""`make bench`'s memory step: resident memory of Tiger's server (and gateway)
against llama.cpp's server on the embedded model, at the same context capacity.

Both hold 4 sequences of 4,096 tokens, 16,384 in all (llama.cpp: `-np 4 -c
16384`, its default f16 cache; Tiger: `--max-batch 4 --max-context 4096`, with
the default int4 graph's float32 cache and with int4-kv8's int8 one). Read from
`/proc/<pid>/status`: the resident size once the model is loaded and has answered
one short request, then with every sequence's context filled (4 prompts of about
3,800 tokens at once, each its own text, so that no prefix is shared), and the
peak. Run alone:
`python -m tiger_grpc.tools.bench_memory [--llama-server PATH]`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp

from ..config import DEFAULT_MODEL_ID, default_home
from ..models.loaded import load_tokenizer
from ..models.store import HF_DIR, ModelStore
from .bench_chat import llama_process, system_prompt
from .serve_calls import ask
from .stack import API_KEY, served_processes

SEQUENCES, CONTEXT = 4, 4096
# The default graph, and the same weights with an int8 KV cache (a quarter of the
# float32 cache's bytes: see `models.graph.kvcache`).
PRECISIONS = ("int4", "int4-kv8")
LLAMA = "llama.cpp server"
PROMPT_TOKENS = 3800
MIB = 2**20


def status_bytes(pid: int) -> dict[str, int]:
    """The process's resident size now (`VmRSS`) and at its peak (`VmHWM`)."""
    found = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in ("VmRSS", "VmHWM"):
            found[name] = int(value.split()[0]) * 1024
    return found


async def _ask_all(url: str, contents: list[str]) -> None:
    """Greedy answers of 8 tokens to every one of `contents`, all at once."""
    headers = {"Authorization": f"Bearer {API_KEY}"}
    timeout = aiohttp.ClientTimeout(total=900)
    async with aiohttp.ClientSession(headers=headers, timeout=timeout) as session:

        async def one(content: str) -> None:
            body = ask(DEFAULT_MODEL_ID, content, 8)
            async with session.post(f"{url}/v1/chat/completions", json=body) as r:
                r.raise_for_status()
                await r.read()

        await asyncio.gather(*(one(c) for c in contents))


def _measure(name: str, url: str, pids: dict[str, int], prompts: list[str]) -> dict:
    """The resident sizes once a short request is answered, then once every
    prompt is."""
    row: dict[str, Any] = {"server": name}
    asyncio.run(_ask_all(url, ["Hello!"]))
    time.sleep(1.0)
    for part, pid in pids.items():
        row[f"{part}_loaded_mb"] = round(status_bytes(pid)["VmRSS"] / MIB)
    asyncio.run(_ask_all(url, prompts))
    for part, pid in pids.items():
        now = status_bytes(pid)
        row[f"{part}_filled_mb"] = round(now["VmRSS"] / MIB)
        row[f"{part}_peak_mb"] = round(now["VmHWM"] / MIB)
    return row


@contextlib.contextmanager
def _tiger(home: Path, precision: str) -> Iterator[tuple[str, dict[str, int]]]:
    sizes = ("--max-batch", str(SEQUENCES), "--max-context", str(CONTEXT))
    with served_processes(
        home, server_args=sizes, TIGER_PRECISION=precision, TIGER_DEVICE="cpu"
    ) as (server, gateway):
        pids = {"server": server.popen.pid, "gateway": gateway.popen.pid}
        yield f"http://127.0.0.1:{gateway.port}", pids


@contextlib.contextmanager
def _llama(binary: Path) -> Iterator[tuple[str, dict[str, int]]]:
    context = SEQUENCES * CONTEXT
    with llama_process(binary, slots=SEQUENCES, context=context) as (url, popen):
        yield url, {"server": popen.pid}


def measure(home: Path, llama: Path | None) -> list[dict[str, Any]]:
    """Each server alone: its resident sizes, MiB."""
    tokenizer = load_tokenizer(str(ModelStore(home).path(DEFAULT_MODEL_ID) / HF_DIR))
    prompts = [
        system_prompt(tokenizer, 100 + seed, PROMPT_TOKENS) + "\nWhich rule is first?"
        for seed in range(SEQUENCES)
    ]
    servers: list[tuple[str, Any]] = [
        (f"Tiger ({precision})", functools.partial(_tiger, home, precision))
        for precision in PRECISIONS
    ]
    if llama is not None:
        servers.append((LLAMA, lambda: _llama(llama)))
    rows = []
    for name, start in servers:
        print(f"  memory: {name}...", file=sys.stderr)
        with start() as (url, pids):
            rows.append(_measure(name, url, pids, prompts))
    return rows


def targets(rows: list[dict[str, Any]]) -> list[tuple[str, float, str, bool]]:
    """Each Tiger server's resident size against llama.cpp's: loaded, and at its
    peak with every context filled (only with llama.cpp measured)."""
    llama = next((r for r in rows if r["server"] == LLAMA), None)
    if llama is None:
        return []
    found = []
    for tiger in (r for r in rows if r is not llama):
        for when in ("loaded", "peak"):
            ratio = tiger[f"server_{when}_mb"] / llama[f"server_{when}_mb"]
            name = f"server resident memory, {when}: {tiger['server']} / llama.cpp"
            found.append((name, round(ratio, 2), "<= 1.0", ratio <= 1.0))
    return found


def markdown(rows: list[dict[str, Any]]) -> str:
    lines = [
        f"### Resident memory, {SEQUENCES} sequences of {CONTEXT:,} tokens "
        f"({SEQUENCES * CONTEXT:,} in all), MiB",
        "",
        "| server | model loaded | contexts filled | peak |",
        "|---|---:|---:|---:|",
    ]
    for row in rows:
        for part in ("server", "gateway"):
            if f"{part}_loaded_mb" not in row:
                continue
            name = row["server"] if part == "server" else f"{row['server']} gateway"
            lines.append(
                f"| {name} | {row[f'{part}_loaded_mb']} | "
                f"{row[f'{part}_filled_mb']} | {row[f'{part}_peak_mb']} |"
            )
    for name, ratio, wanted, _ in targets(rows):
        lines.append(f"\n{name}: {ratio:.2f} ({wanted})")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        prog="tiger-bench-memory",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--llama-server", type=Path, default=None)
    args = parser.parse_args()
    print(markdown(measure(default_home(), args.llama_server)))


if __name__ == "__main__":
    main()
