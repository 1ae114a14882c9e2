"""The chat scenario of `make bench`: time to first token, turn after turn.

A conversation of a ~2,000-token system prompt and 6 user turns is replayed,
greedy and streaming, over OpenAI's chat completions (the route every peer
speaks); each turn sends the whole conversation so far, with the answers the
server itself gave, as a chat client does. Against Tiger with its prefix cache,
Tiger with `TIGER_PREFIX_CACHE=0`, and llama.cpp's server on the same GGUF when
`--llama-server PATH` is given (2 threads, 4 slots of 4,096 tokens). Each server
runs alone. Then short prompts: the bench's questions (about 36 tokens after the
chat template), one at a time.

Reported: each turn's time to first token (median over the conversations, each
with its own system prompt), p50/p95 over the turns that follow the first, and
the short prompts' p50/p95. Run alone: `python -m tiger_grpc.tools.bench_chat`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np

from ..config import DEFAULT_MODEL_ID, default_home
from ..models.embedded import find_gguf
from ..models.loaded import load_tokenizer
from ..models.store import HF_DIR, ModelStore
from .bench_report import chat_markdown
from .bench_stats import PROMPTS, percentile
from .stack import API_KEY, served

TURNS = 6
SYSTEM_TOKENS = 2000
ANSWER_TOKENS = 48
QUESTIONS = [
    "Which rule covers refunds, and what does it say?",
    "Summarise the rules about shipping in two sentences.",
    "A customer writes in French. What do I do?",
    "Which rules mention weekends?",
    "What should I never promise a customer?",
    "Give me the three most important rules.",
]
SUBJECTS = ["Refunds", "Shipping", "Weekend orders", "Gift cards", "Returns",
            "Warranty claims", "Bulk orders", "Support tickets", "Invoices",
            "Discount codes", "Damaged parcels", "Account changes"]  # fmt: skip
ACTIONS = ["must be approved by a supervisor", "are answered within one day",
           "need the order number", "go to the billing team",
           "are logged in the ticket system", "are never promised by phone",
           "follow the standard template", "are checked twice",
           "are handled in the customer's language"]  # fmt: skip
CONDITIONS = ["when the amount is over 100 euros", "unless the customer is new",
              "on weekends and holidays", "if the parcel left the warehouse",
              "for orders from abroad", "when the customer asks twice",
              "during the holiday season"]  # fmt: skip


def system_prompt(tokenizer: Any, seed: int, target: int = SYSTEM_TOKENS) -> str:
    """A support handbook of numbered rules, about `target` tokens long."""
    rng = np.random.default_rng(seed)
    lines = ["You are the support assistant of Tiger Shop. Follow these rules."]
    while len(tokenizer.encode("\n".join(lines))) < target:
        lines.append(
            f"Rule {len(lines)}: {rng.choice(SUBJECTS)} {rng.choice(ACTIONS)} "
            f"{rng.choice(CONDITIONS)}."
        )
    return "\n".join(lines)


@dataclass
class Run:
    """One server's figures: per conversation, each turn's TTFT (s)."""

    server: str
    conversations: list[list[float]] = field(default_factory=list)
    short: list[float] = field(default_factory=list)
    cached_tokens: list[int] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        turns = np.median(np.array(self.conversations), axis=0) * 1000
        later = sorted(t * 1000 for c in self.conversations for t in c[1:])
        short = sorted(t * 1000 for t in self.short)
        return {
            "server": self.server,
            "turns_ms": [round(float(t), 1) for t in turns],
            "later_p50_ms": percentile(later, 50),
            "later_p95_ms": percentile(later, 95),
            "short_p50_ms": percentile(short, 50),
            "short_p95_ms": percentile(short, 95),
            "cached_tokens": self.cached_tokens,
        }


async def _turn(
    session: aiohttp.ClientSession, url: str, messages: list[dict[str, str]]
) -> tuple[float, str, int]:
    """One streamed, greedy answer: TTFT (s), its text, the cached prompt tokens."""
    body = {
        "model": DEFAULT_MODEL_ID,
        "messages": messages,
        "stream": True,
        "temperature": 0,
        "max_tokens": ANSWER_TOKENS,
        "stream_options": {"include_usage": True},
    }
    start = time.perf_counter()
    first, text, cached = None, [], 0
    async with session.post(url, json=body) as reply:
        reply.raise_for_status()
        async for line in reply.content:
            if not line.startswith(b"data: {"):
                continue
            chunk = json.loads(line[6:])
            usage = chunk.get("usage") or {}
            details = usage.get("prompt_tokens_details") or {}
            cached = details.get("cached_tokens", cached) or cached
            for choice in chunk.get("choices") or []:
                content = choice["delta"].get("content")
                if content:
                    first = first or time.perf_counter()
                    text.append(content)
    assert first is not None, "no token came back"
    return first - start, "".join(text), cached


async def measure(name: str, base: str, systems: list[str], shorts: list[str]) -> Run:
    run = Run(name)
    headers = {"Authorization": f"Bearer {API_KEY}"}
    url = f"{base}/v1/chat/completions"
    timeout = aiohttp.ClientTimeout(total=600)
    # A connection per request, for every server alike: llama.cpp's closes a
    # kept-alive connection after a streamed answer.
    connector = aiohttp.TCPConnector(force_close=True)
    async with aiohttp.ClientSession(
        headers=headers, timeout=timeout, connector=connector
    ) as session:
        await _turn(session, url, [{"role": "user", "content": "Hello!"}])  # warm
        for system in systems:
            messages = [{"role": "system", "content": system}]
            ttfts = []
            for question in QUESTIONS[:TURNS]:
                messages.append({"role": "user", "content": question})
                ttft, answer, cached = await _turn(session, url, messages)
                messages.append({"role": "assistant", "content": answer})
                ttfts.append(ttft)
                run.cached_tokens.append(cached)
            run.conversations.append(ttfts)
        for prompt in shorts:
            alone = [{"role": "user", "content": prompt}]
            ttft, _, _ = await _turn(session, url, alone)
            run.short.append(ttft)
    return run


@contextlib.contextmanager
def tiger(home: Path, prefix_cache: bool) -> Iterator[str]:
    """Tiger's server and gateway on free ports; yields the gateway's URL."""
    with served(home, TIGER_PREFIX_CACHE="1" if prefix_cache else "0") as (_, port):
        yield f"http://127.0.0.1:{port}"


@contextlib.contextmanager
def llama_server(
    binary: Path, gguf: Path | None = None, slots: int = 4, context: int = 16384
) -> Iterator[str]:
    """llama.cpp's server (2 threads) on a GGUF, the embedded model's unless
    given; yields its URL."""
    with llama_process(binary, gguf, slots, context) as (url, _):
        yield url


@contextlib.contextmanager
def llama_process(
    binary: Path, gguf: Path | None = None, slots: int = 4, context: int = 16384
) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """As `llama_server`, yielding its URL and its process."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {**os.environ, "LD_LIBRARY_PATH": str(binary.parent)}
    args = [str(binary), "-m", str(gguf or find_gguf()), "-t", "2", "-np",
            str(slots), "-c", str(context), "--host", "127.0.0.1", "--port",
            str(port), "--api-key", API_KEY]  # fmt: skip
    log = Path(tempfile.mkdtemp(prefix="tiger-bench-llama-")) / "llama-server.log"
    with log.open("wb") as out:
        popen = subprocess.Popen(args, env=env, stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_healthy(url, popen)
        yield url, popen
    finally:
        popen.terminate()
        popen.wait(timeout=30)


def _wait_healthy(url: str, popen: subprocess.Popen[bytes]) -> None:
    import urllib.request

    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if popen.poll() is not None:
            raise RuntimeError("llama-server exited before it was ready")
        with contextlib.suppress(OSError):
            with urllib.request.urlopen(f"{url}/health", timeout=2) as reply:
                if reply.status == 200:
                    return
        time.sleep(0.5)
    raise RuntimeError("llama-server was not ready within 120 s")


def scenario(
    home: Path, conversations: int, llama: Path | None, shorts: list[str]
) -> list[dict[str, Any]]:
    """Every server in turn, alone on the machine."""
    tokenizer = load_tokenizer(str(ModelStore(home).path(DEFAULT_MODEL_ID) / HF_DIR))
    systems = [system_prompt(tokenizer, seed) for seed in range(conversations)]
    servers: list[tuple[str, Any]] = [
        ("Tiger, prefix cache", lambda: tiger(home, True)),
        ("Tiger, TIGER_PREFIX_CACHE=0", lambda: tiger(home, False)),
    ]
    if llama is not None:
        servers.append(("llama.cpp server", lambda: llama_server(llama)))
    runs = []
    for name, start in servers:
        print(f"  chat scenario: {name}...", file=sys.stderr)
        with start() as base:
            runs.append(asyncio.run(measure(name, base, systems, shorts)))
    return [run.summary() for run in runs]


def main() -> None:
    parser = argparse.ArgumentParser(
        prog="tiger-bench-chat",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--conversations", type=int, default=2)
    parser.add_argument("--llama-server", type=Path, default=None)
    args = parser.parse_args()
    rows = scenario(default_home(), args.conversations, args.llama_server, PROMPTS)
    print(chat_markdown(rows))


if __name__ == "__main__":
    main()
