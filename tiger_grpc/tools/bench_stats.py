"""What `make bench` measures per stream and per level of concurrency."""

from __future__ import annotations

import asyncio
import json
import statistics
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from ..config import DEFAULT_MODEL_ID

# The questions every scenario asks (about 36 tokens after the chat template).
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

    def summary(self) -> dict[str, Any]:
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
            "ttft_p50_ms": percentile(ttfts, 50),
            "ttft_p95_ms": percentile(ttfts, 95),
            "aggregate_tok_s": sum(s.tokens for s in self.streams) / self.wall_s,
        }


def percentile(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    index = min(len(values) - 1, max(0, round(q / 100 * (len(values) - 1))))
    return values[index]


async def timed(chunks: AsyncIterator[int]) -> Stream:
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


def messages(prompt: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": prompt}]


def chat_body(prompt: str, max_tokens: int, **more: Any) -> dict[str, Any]:
    """A greedy streaming chat request, the same for every HTTP route."""
    return {
        "model": DEFAULT_MODEL_ID,
        "messages": messages(prompt),
        "stream": True,
        "temperature": 0,
        "max_tokens": max_tokens,
        **more,
    }


async def sse_stream(
    session: aiohttp.ClientSession, url: str, prompt: str, max_tokens: int
):
    """The same request through OpenAI's chat completions, as Server-Sent Events."""
    request = chat_body(prompt, max_tokens, stream_options={"include_usage": True})
    async with session.post(url, json=request) as reply:
        count = 0
        async for line in reply.content:
            if not line.startswith(b"data: {"):
                continue
            chunk = json.loads(line[6:])
            if chunk.get("usage"):
                yield chunk["usage"]["completion_tokens"]
            elif chunk["choices"] and chunk["choices"][0]["delta"].get("content"):
                count += 1
                yield count


async def run_round(
    level: Level, make: Callable[[str], AsyncIterator[int]], r: int
) -> None:
    """Round `r` of a level: `concurrency` streams at once, added to the level."""
    c = level.concurrency
    prompts = [PROMPTS[(r * c + i) % len(PROMPTS)] for i in range(c)]
    started = time.perf_counter()
    level.streams += await asyncio.gather(*(timed(make(p)) for p in prompts))
    level.wall_s += time.perf_counter() - started


async def run_level(
    name: str, concurrency: int, make: Callable[[str], AsyncIterator[int]], rounds: int
) -> Level:
    level = Level(name, concurrency)
    for r in range(rounds):
        await run_round(level, make, r)
    return level
