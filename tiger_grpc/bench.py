"""`make bench`: Tiger against the usual ways to run the same model, side by side.

One run, same prompts, same machine: Tiger over HTTP streaming, over gRPC, its
engine in-process, optimum's `ORTModelForCausalLM.generate` on the fp32 export, and
transformers' `generate` in PyTorch. Greedy decoding. For each: decode tokens/s per
stream, time to first token (p50/p95) and aggregate tokens/s at 1, 4, 8 and 16
concurrent streams (the baselines generate one request at a time). Writes
bench.json, bench.md and bench.png, and prints the table and the target ratios.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import grpc

from .config import EngineOptions, default_home
from .pb.tiger.v1 import tiger_pb2 as pb
from .pb.tiger.v1 import tiger_pb2_grpc as pb_grpc
from .prepare import DEFAULT_MODEL_ID, default_precision, ensure_default_model
from .store import ModelStore
from .validation import ChatMessage, GenerateParams

PROMPTS = [
    "Why is the sky blue?",
    "Write a short poem about the sea.",
    "Explain photosynthesis to a child.",
    "What are the benefits of exercise?",
    "Describe a busy city market.",
    "How does a bicycle work?",
    "Give three tips for learning a language.",
    "What is the water cycle?",
    "Tell me a story about a brave mouse.",
    "Why do leaves change colour in autumn?",
    "How do airplanes stay in the air?",
    "What makes a good friend?",
    "Explain how a rainbow forms.",
    "Describe your ideal weekend.",
    "What is the difference between weather and climate?",
    "How do bees make honey?",
]
API_KEY = "bench-key"


@dataclass
class Stream:
    ttft_s: float
    tokens: int
    decode_s: float  # from the first token to the last


@dataclass
class Level:
    backend: str
    concurrency: int
    streams: list[Stream] = field(default_factory=list)
    wall_s: float = 0.0

    def summary(self) -> dict[str, float]:
        ttfts = sorted(s.ttft_s * 1000 for s in self.streams)
        decode = [
            (s.tokens - 1) / s.decode_s
            for s in self.streams
            if s.tokens > 1 and s.decode_s > 0
        ]
        return {
            "backend": self.backend,
            "concurrency": self.concurrency,
            "streams": len(self.streams),
            "decode_tok_s": statistics.mean(decode) if decode else 0.0,
            "ttft_p50_ms": _percentile(ttfts, 50),
            "ttft_p95_ms": _percentile(ttfts, 95),
            "aggregate_tok_s": sum(s.tokens for s in self.streams) / self.wall_s,
        }


def _percentile(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    index = min(len(values) - 1, max(0, round(q / 100 * (len(values) - 1))))
    return values[index]


async def _timed(chunks: AsyncIterator[int]) -> Stream:
    """Consumes (token count increments) from a stream, timing first and last."""
    start = time.perf_counter()
    first = last = None
    tokens = 0
    async for n in chunks:
        now = time.perf_counter()
        first = first or now
        last = now
        tokens = n
    assert first is not None and last is not None, "no token came back"
    return Stream(first - start, tokens, last - first)


def _messages(prompt: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": prompt}]


async def _http_stream(
    session: aiohttp.ClientSession, url: str, prompt: str, max_tokens: int
):
    body = {
        "model": DEFAULT_MODEL_ID,
        "messages": _messages(prompt),
        "stream": True,
        "temperature": 0,
        "max_tokens": max_tokens,
    }
    async with session.post(url, json=body) as reply:
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
    from .engine.types import Delta, Stop

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


async def _level(
    name: str, concurrency: int, make: Callable[[str], AsyncIterator[int]], rounds: int
) -> Level:
    level = Level(name, concurrency)
    started = time.perf_counter()
    for r in range(rounds):
        prompts = [
            PROMPTS[(r * concurrency + i) % len(PROMPTS)] for i in range(concurrency)
        ]
        level.streams += await asyncio.gather(*(_timed(make(p)) for p in prompts))
    level.wall_s = time.perf_counter() - started
    return level


def _baseline(
    name: str, generate: Callable[[str, int], int], prompts: list[str], max_tokens: int
) -> Level:
    """A one-request-at-a-time library: TTFT from a 1-token run, decode from the rest."""
    level = Level(name, 1)
    started = time.perf_counter()
    for prompt in prompts:
        t0 = time.perf_counter()
        generate(prompt, 1)
        ttft = time.perf_counter() - t0
        t1 = time.perf_counter()
        tokens = generate(prompt, max_tokens)
        total = time.perf_counter() - t1
        level.streams.append(Stream(ttft, tokens, max(total - ttft, 1e-9)))
    level.wall_s = time.perf_counter() - started - sum(s.ttft_s for s in level.streams)
    return level


def _hf_baselines(model_dir: Path, prompts: list[str], max_tokens: int) -> list[Level]:
    import torch
    from optimum.onnxruntime import ORTModelForCausalLM
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir / "hf")
    eos = json.loads((model_dir / "model.json").read_text())["eos_token_ids"]

    def runner(model):
        def generate(prompt: str, n: int) -> int:
            ids = tokenizer.apply_chat_template(
                _messages(prompt), add_generation_prompt=True, return_tensors="pt"
            )
            with torch.no_grad():
                out = model.generate(
                    ids,
                    attention_mask=torch.ones_like(ids),
                    max_new_tokens=n,
                    do_sample=False,
                    eos_token_id=eos,
                    pad_token_id=eos[0],
                )
            return int(out.shape[1] - ids.shape[1])

        return generate

    optimum_model = ORTModelForCausalLM.from_pretrained(
        model_dir / "onnx", use_cache=True, provider="CPUExecutionProvider"
    )
    levels = [
        _baseline(
            "optimum ORTModelForCausalLM.generate (fp32)",
            runner(optimum_model),
            prompts,
            max_tokens,
        )
    ]
    del optimum_model
    torch_model = AutoModelForCausalLM.from_pretrained(model_dir / "hf").eval()
    levels.append(
        _baseline(
            "transformers generate (PyTorch fp32)",
            runner(torch_model),
            prompts,
            max_tokens,
        )
    )
    return levels


def _start(
    args: list[str], env: dict[str, str], workdir: Path, name: str
) -> tuple[subprocess.Popen, int]:
    port_file = workdir / f"{name}.port"
    log = (workdir / f"{name}.log").open("wb")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            *args,
            "--port-file",
            str(port_file),
            "--log-level",
            "WARNING",
        ],
        env=env,
        stdout=log,
        stderr=log,
    )
    log.close()
    deadline = time.monotonic() + 120
    while not port_file.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"{name} did not start; see {workdir / (name + '.log')}")
        time.sleep(0.05)
    return proc, int(port_file.read_text().split()[0])


async def run(args: argparse.Namespace) -> list[dict[str, float]]:
    home = default_home()
    store = ModelStore(home)
    ensure_default_model(store, args.precision)
    model_dir = store.path(DEFAULT_MODEL_ID)
    levels_c = [1, 4, 8, 16]
    rounds = 1 if args.quick else 2
    results: list[Level] = []
    workdir = Path(tempfile.mkdtemp(prefix="tiger-bench-"))
    env = {
        **os.environ,
        "TIGER_HOME": str(home),
        "TIGER_API_KEY": API_KEY,
        "TIGER_PRECISION": args.precision,
    }
    server, grpc_port = _start(
        [
            "tiger_grpc.server",
            "--port",
            "0",
            "--host",
            "127.0.0.1",
            "--metrics-port",
            "-1",
        ],
        env,
        workdir,
        "server",
    )
    gateway, http_port = _start(
        [
            "gateway.main",
            "--port",
            "0",
            "--host",
            "127.0.0.1",
            "--grpc-target",
            f"127.0.0.1:{grpc_port}",
        ],
        env,
        workdir,
        "gateway",
    )
    try:
        url = f"http://127.0.0.1:{http_port}/v1/generate_response"
        async with (
            aiohttp.ClientSession(
                headers={"Authorization": f"Bearer {API_KEY}"},
                timeout=aiohttp.ClientTimeout(total=None),
            ) as session,
            grpc.aio.insecure_channel(f"127.0.0.1:{grpc_port}") as channel,
        ):
            stub = pb_grpc.TigerStub(channel)
            await _level("warm-up", 1, lambda p: _http_stream(session, url, p, 4), 1)
            for c in levels_c:
                print(
                    f"  Tiger HTTP / gRPC, {c} concurrent streams...", file=sys.stderr
                )
                results.append(
                    await _level(
                        "Tiger HTTP streaming",
                        c,
                        lambda p: _http_stream(session, url, p, args.max_tokens),
                        rounds,
                    )
                )
                results.append(
                    await _level(
                        "Tiger gRPC",
                        c,
                        lambda p: _grpc_stream(stub, p, args.max_tokens),
                        rounds,
                    )
                )
    finally:
        for proc in (gateway, server):
            proc.terminate()
            proc.wait(timeout=30)
    from .models import ModelRegistry

    registry = ModelRegistry(store, EngineOptions(precision=args.precision))
    try:
        await _level("warm-up", 1, lambda p: _engine_stream(registry, p, 4), 1)
        for c in levels_c:
            print(f"  engine in-process, {c} concurrent streams...", file=sys.stderr)
            results.append(
                await _level(
                    "Tiger engine in-process",
                    c,
                    lambda p: _engine_stream(registry, p, args.max_tokens),
                    rounds,
                )
            )
    finally:
        registry.close()
    print("  optimum and transformers baselines...", file=sys.stderr)
    baseline_prompts = PROMPTS[: 2 if args.quick else 4]
    results += await asyncio.to_thread(
        _hf_baselines, model_dir, baseline_prompts, args.max_tokens
    )
    return [level.summary() for level in results]


def _targets(rows: list[dict[str, float]]) -> list[tuple[str, float, str, bool]]:
    def get(backend: str, c: int = 1) -> dict[str, float]:
        return next(
            r
            for r in rows
            if r["backend"].startswith(backend) and r["concurrency"] == c
        )

    http, engine = get("Tiger HTTP"), get("Tiger engine")
    optimum = get("optimum")
    agg8 = get("Tiger HTTP", 8)["aggregate_tok_s"] / http["aggregate_tok_s"]
    return [
        (
            "HTTP 1-stream decode / optimum generate",
            http["decode_tok_s"] / optimum["decode_tok_s"],
            ">= 4.5",
            http["decode_tok_s"] / optimum["decode_tok_s"] >= 4.5,
        ),
        (
            "HTTP 1-stream decode / engine in-process",
            http["decode_tok_s"] / engine["decode_tok_s"],
            ">= 0.95",
            http["decode_tok_s"] / engine["decode_tok_s"] >= 0.95,
        ),
        ("HTTP aggregate at 8 streams / 1 stream", agg8, ">= 3", agg8 >= 3),
        (
            "HTTP TTFT p50 - in-process TTFT p50 (ms)",
            http["ttft_p50_ms"] - engine["ttft_p50_ms"],
            "<= 20",
            http["ttft_p50_ms"] - engine["ttft_p50_ms"] <= 20,
        ),
    ]


def _markdown(rows: list[dict[str, float]], meta: dict[str, object]) -> str:
    lines = [
        f"Tiger benchmark: {meta['model']} ({meta['precision']} fused graph), greedy, "
        f"max_tokens {meta['max_tokens']}, {meta['cpus']} CPUs, {meta['date']}",
        "",
        "| backend | streams | decode tok/s per stream | TTFT p50 ms | TTFT p95 ms | aggregate tok/s |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['backend']} | {r['concurrency']} | {r['decode_tok_s']:.1f} | "
            f"{r['ttft_p50_ms']:.0f} | {r['ttft_p95_ms']:.0f} | {r['aggregate_tok_s']:.1f} |"
        )
    lines += ["", "| target | measured | wanted | met |", "|---|---:|---|---|"]
    for name, value, wanted, met in _targets(rows):
        lines.append(f"| {name} | {value:.2f} | {wanted} | {'yes' if met else 'NO'} |")
    return "\n".join(lines) + "\n"


def _chart(rows: list[dict[str, float]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for backend in dict.fromkeys(r["backend"] for r in rows):
        points = [
            (r["concurrency"], r["aggregate_tok_s"])
            for r in rows
            if r["backend"] == backend
        ]
        xs, ys = zip(*points, strict=True)
        ax.plot(xs, ys, marker="o", label=backend)
    ax.set_xlabel("concurrent streams")
    ax.set_ylabel("aggregate tokens/s")
    ax.set_xticks([1, 4, 8, 16])
    ax.set_title("Tiger: aggregate decode throughput")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


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
    args = parser.parse_args()
    args.precision = args.precision or default_precision()
    args.max_tokens = args.max_tokens or (48 if args.quick else 128)
    rows = asyncio.run(run(args))
    meta = {
        "model": DEFAULT_MODEL_ID,
        "precision": args.precision,
        "max_tokens": args.max_tokens,
        "cpus": os.cpu_count(),
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "quick": args.quick,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    targets = [
        {"target": n, "measured": v, "wanted": w, "met": m}
        for n, v, w, m in _targets(rows)
    ]
    (args.out / "bench.json").write_text(
        json.dumps({"meta": meta, "results": rows, "targets": targets}, indent=2)
    )
    table = _markdown(rows, meta)
    (args.out / "bench.md").write_text(table)
    _chart(rows, args.out / "bench.png")
    print(table)
    print(f"wrote {args.out}/bench.json, bench.md, bench.png")


if __name__ == "__main__":
    main()
