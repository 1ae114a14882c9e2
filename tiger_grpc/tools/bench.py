"""`make bench`: Tiger against the usual ways to run the same model, side by side.

One run, same prompts, same machine: Tiger over HTTP streaming, over gRPC, its
engine in-process, optimum's `ORTModelForCausalLM.generate` on the fp32 export,
transformers' `generate` in PyTorch and, with `--llama-server PATH`, llama.cpp's
server on the same GGUF over the same OpenAI route, its requests taking turns with
Tiger's in the same rounds. Greedy decoding. For each: decode tokens/s per stream,
time to first token (p50/p95) and aggregate tokens/s at 1, 4, 8 and 16 concurrent
streams (the baselines generate one request at a time). Then the chat scenario
(`bench_chat`): a multi-turn conversation's time to first token per turn with the
prefix cache, without it, and on llama.cpp's server (`--llama-server PATH`). Then
structured output (`bench_structured`): a JSON schema's cost in decode speed and
time to first token, and the validity of answers over generated schemas. Then key
checks (`bench_keys`): a burst's requests per second with a key file of 1,000 keys
against one key. Then memory (`bench_memory`): the server's resident size with the
model loaded and with 16,384 tokens of context filled, against llama.cpp's server at
the same capacity. Then quality (`bench_quality`): every precision's top-1
agreement, KL divergence and perplexity against the fp32 export on a held-out text.
Then (not with `--quick`) the 1B scale (`bench_scale`): a random 1.07B Llama's
decode speed, against llama.cpp's Q4_0 of the same weights with `--llama-server`.
Writes bench.json, bench.md and bench.png, and prints the tables and the target
ratios.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import sys
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import grpc

from ..api.events import Delta, Stop
from ..api.params import ChatMessage, GenerateParams
from ..config import EngineOptions, default_home, ort_spin
from ..models.embedded import DEFAULT_MODEL_ID, ensure_default_model
from ..models.precision import precision_from_env
from ..models.store import ModelStore
from ..pb.tiger.v1 import tiger_pb2 as pb
from ..pb.tiger.v1 import tiger_pb2_grpc as pb_grpc
from .bench_chat import llama_server, scenario
from .bench_keys import markdown as keys_markdown
from .bench_keys import measure as measure_keys
from .bench_keys import targets as keys_targets
from .bench_memory import markdown as memory_markdown
from .bench_memory import measure as measure_memory
from .bench_memory import targets as memory_targets
from .bench_peers import hf_baselines
from .bench_quality import markdown as quality_markdown
from .bench_quality import measure as measure_quality
from .bench_quality import measure_kquant
from .bench_quality import targets as quality_targets
from .bench_report import (
    chart,
    chat_markdown,
    chat_targets,
    markdown,
    peer_targets,
    targets,
)
from .bench_scale import markdown as scale_markdown
from .bench_scale import measure as measure_scale
from .bench_scale import targets as scale_targets
from .bench_stats import PROMPTS, Level, chat_body, run_level, run_round, sse_stream
from .bench_structured import markdown as structured_markdown
from .bench_structured import scenario as structured_scenario
from .bench_structured import targets as structured_targets
from .stack import API_KEY, served

LEVELS = [1, 4, 8, 16]
SOLO_ROUNDS = 4  # rounds of a single stream, per round of the other levels
LLAMA = "llama.cpp server SSE"
LLAMA_CONTEXT = 1024  # per slot: the bench's questions and answers fit in it


async def _http_stream(
    session: aiohttp.ClientSession, url: str, prompt: str, max_tokens: int
):
    async with session.post(url, json=chat_body(prompt, max_tokens)) as reply:
        count = 0
        async for line in reply.content:
            chunk = json.loads(line)
            if chunk["type"] == "delta":
                count += 1
                yield count
            elif chunk["type"] == "stop":
                yield chunk["usage"]["output_tokens"]


async def _grpc_stream(stub: pb_grpc.TigerStub, prompt: str, max_tokens: int):
    request = pb.GenerateRequest(
        model=DEFAULT_MODEL_ID,
        max_tokens=max_tokens,
        temperature=0.0,
        messages=[pb.Message(role="user", content=prompt)],
    )
    count = 0
    async for chunk in stub.Generate(
        request, metadata=(("authorization", f"Bearer {API_KEY}"),)
    ):
        if chunk.HasField("delta"):
            count += 1
            yield count
        elif chunk.HasField("stop"):
            yield chunk.stop.usage.output_tokens


async def _engine_stream(registry, prompt: str, max_tokens: int):
    params = GenerateParams(
        model=DEFAULT_MODEL_ID,
        messages=(ChatMessage("user", prompt),),
        temperature=0.0,
        max_tokens=max_tokens,
    )
    count = 0
    async for event in registry.generate(params):
        if isinstance(event, Delta):
            count += 1
            yield count
        elif isinstance(event, Stop):
            yield event.usage.output_tokens


async def _over_the_network(
    args: argparse.Namespace, home: Path, rounds: int
) -> list[Level]:
    """Tiger over HTTP and over gRPC: the real server and gateway; with
    `--llama-server`, llama.cpp's server on the same GGUF, up at the same time and
    taking its turn in the same rounds."""
    with contextlib.ExitStack() as up:
        target, http_port = up.enter_context(
            served(home, TIGER_PRECISION=args.precision)
        )
        llama = None
        if args.llama_server:
            slots = max(LEVELS)
            llama = up.enter_context(
                llama_server(
                    args.llama_server, slots=slots, context=slots * LLAMA_CONTEXT
                )
            )
        return await _network_levels(args, target, http_port, rounds, llama)


async def _network_levels(
    args: argparse.Namespace,
    target: str,
    http_port: int,
    rounds: int,
    llama: str | None = None,
) -> list[Level]:
    results: list[Level] = []
    base = f"http://127.0.0.1:{http_port}/v1"
    headers = {"Authorization": f"Bearer {API_KEY}"}
    forever = aiohttp.ClientTimeout(total=None)
    async with (
        aiohttp.ClientSession(headers=headers, timeout=forever) as session,
        # A connection per request: llama.cpp's server closes a kept-alive
        # connection after a streamed answer.
        aiohttp.ClientSession(
            headers=headers,
            timeout=forever,
            connector=aiohttp.TCPConnector(force_close=True),
        ) as closing,
        grpc.aio.insecure_channel(target) as channel,
    ):
        stub = pb_grpc.TigerStub(channel)
        url, sse = f"{base}/generate_response", f"{base}/chat/completions"
        backends: dict[str, Callable[[str, int], AsyncIterator[int]]] = {
            "Tiger HTTP streaming": lambda p, n: _http_stream(session, url, p, n),
            "Tiger OpenAI SSE": lambda p, n: sse_stream(session, sse, p, n),
            "Tiger gRPC": lambda p, n: _grpc_stream(stub, p, n),
        }
        if llama is not None:
            peer = f"{llama}/v1/chat/completions"
            backends[LLAMA] = lambda p, n: sse_stream(closing, peer, p, n)
        for name, make in backends.items():
            await run_level(f"warm-up {name}", 1, lambda p, m=make: m(p, 4), 1)
        names, tokens = list(backends), args.max_tokens
        for c in LEVELS:
            print(f"  over the network, {c} concurrent streams...", file=sys.stderr)
            levels = {name: Level(name, c) for name in backends}
            # Round-robin, the order turning each round, so that the routes (and
            # llama.cpp's server) are compared under the same conditions: this
            # machine's speed drifts by tens of percent within minutes. One stream
            # gets more rounds, as its time to first token is the noisiest figure.
            for r in range(rounds * SOLO_ROUNDS if c == 1 else rounds):
                turn = r % len(names)
                for name in names[turn:] + names[:turn]:
                    make = backends[name]
                    await run_round(levels[name], lambda p, m=make: m(p, tokens), r)
            results += levels.values()
    return results


async def _in_process(
    args: argparse.Namespace, store: ModelStore, rounds: int
) -> list[Level]:
    """Tiger's engine without the network: the registry the server uses."""
    from ..models.registry import ModelRegistry

    options = EngineOptions(precision=args.precision, ort_spin=ort_spin())
    registry = ModelRegistry(store, options)
    results = []
    try:
        await run_level("warm-up", 1, lambda p: _engine_stream(registry, p, 4), 1)
        for c in LEVELS:
            print(f"  engine in-process, {c} concurrent streams...", file=sys.stderr)
            results.append(
                await run_level(
                    "Tiger engine in-process",
                    c,
                    lambda p: _engine_stream(registry, p, args.max_tokens),
                    rounds * SOLO_ROUNDS if c == 1 else rounds,
                )
            )
    finally:
        registry.close()
    return results


async def run(args: argparse.Namespace) -> list[dict[str, float]]:
    home = default_home()
    store = ModelStore(home)
    ensure_default_model(store, args.precision)
    rounds = 1 if args.quick else 2
    results = await _over_the_network(args, home, rounds)
    results += await _in_process(args, store, rounds)
    print("  optimum and transformers baselines...", file=sys.stderr)
    prompts = PROMPTS[: 2 if args.quick else 4]
    results += await asyncio.to_thread(
        hf_baselines, store.path(DEFAULT_MODEL_ID), prompts, args.max_tokens
    )
    return [level.summary() for level in results]


def chat(args: argparse.Namespace) -> list[dict[str, Any]]:
    """The chat scenario (`bench_chat`), each server alone on the machine."""
    conversations = 1 if args.quick else 2
    return scenario(default_home(), conversations, args.llama_server, PROMPTS)


def main() -> None:
    parser = argparse.ArgumentParser(
        prog="tiger-bench",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--quick", action="store_true", help="fewer tokens and rounds (~2 min)"
    )
    parser.add_argument("--max-tokens", type=int, default=None)
    parser.add_argument(
        "--precision",
        default=None,
        help="fused graph (TIGER_PRECISION; default int4 on CPU, fp16 on CUDA)",
    )
    parser.add_argument("--out", type=Path, default=Path("bench-results"))
    parser.add_argument(
        "--llama-server",
        type=Path,
        default=None,
        help="llama.cpp's llama-server binary: the chat scenario runs it too",
    )
    args = parser.parse_args()
    try:
        args.precision = precision_from_env(args.precision)
    except ValueError as exc:
        parser.error(str(exc))
    args.max_tokens = args.max_tokens or (48 if args.quick else 128)
    rows = asyncio.run(run(args))
    chat_rows = chat(args)
    print("  structured output: schemas against free text...", file=sys.stderr)
    rounds, schemas = (2, 16) if args.quick else (4, 40)
    structured = structured_scenario(default_home(), rounds, schemas)
    print("  key checks: a key file against one key...", file=sys.stderr)
    keys = measure_keys(default_home(), 2.0 if args.quick else 4.0)
    memory = measure_memory(default_home(), args.llama_server)
    print("  quality of every precision against fp32...", file=sys.stderr)
    quality_rows = measure_quality(default_home(), 512 if args.quick else None)
    kquant_rows = []
    if args.llama_server:
        print("  K-quant files' graphs against their weights...", file=sys.stderr)
        kquant_rows = measure_kquant(
            default_home(), args.llama_server, 512 if args.quick else None
        )
    scale_rows = []
    if not args.quick:
        print("  a 1B model, Tiger against llama.cpp...", file=sys.stderr)
        scale_rows = measure_scale(default_home(), args.llama_server)
    quality = (quality_rows, kquant_rows)
    _write(args, rows, chat_rows, (structured, keys, memory), quality, scale_rows)


def _write(
    args: argparse.Namespace,
    rows: list[dict[str, Any]],
    chat_rows: list[dict[str, Any]],
    extra: tuple[dict[str, Any], dict[str, Any], list[dict[str, Any]]],
    quality: tuple[list[dict[str, Any]], list[dict[str, Any]]],
    scale_rows: list[dict[str, Any]],
) -> None:
    """bench.json, bench.md and bench.png under `args.out`; the tables printed.
    `extra`: the structured-output, key-check and memory rows; `quality`: the
    embedded model's precisions and the Q4_K_M file's graphs."""
    structured, keys, memory = extra
    quality_rows, kquant_rows = quality
    meta = {
        "model": DEFAULT_MODEL_ID,
        "precision": args.precision,
        "max_tokens": args.max_tokens,
        "cpus": os.cpu_count(),
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "quick": args.quick,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    found = [*targets(rows), *peer_targets(rows), *chat_targets(chat_rows)]
    found += [*structured_targets(structured), *keys_targets(keys)]
    found += [*memory_targets(memory), *quality_targets(quality_rows)]
    found += scale_targets(scale_rows)
    met = [{"target": n, "measured": v, "wanted": w, "met": m} for n, v, w, m in found]
    report = {
        "meta": meta,
        "results": rows,
        "chat": chat_rows,
        "structured": structured,
        "keys": keys,
        "memory": memory,
        "quality": quality_rows,
        "quality_q4_k_m": kquant_rows,
        "scale": scale_rows,
        "targets": met,
    }
    (args.out / "bench.json").write_text(json.dumps(report, indent=2))
    tables = [markdown(rows, meta), chat_markdown(chat_rows)]
    tables.append(structured_markdown(structured))
    tables.append(keys_markdown(keys))
    tables.append(memory_markdown(memory))
    tables.append(quality_markdown(quality_rows, kquant_rows))
    if scale_rows:
        tables.append(scale_markdown(scale_rows))
    table = "\n".join(tables)
    (args.out / "bench.md").write_text(table)
    chart(rows, args.out / "bench.png")
    print(table)
    print(f"wrote {args.out}/bench.json, bench.md, bench.png")


if __name__ == "__main__":
    main()
