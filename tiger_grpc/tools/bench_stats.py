"""What `make bench` measures per stream and per level of concurrency."""

from __future__ import annotations

import statistics
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

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
