"""What `make bench` measures per stream and per level of concurrency."""

from __future__ import annotations

import statistics
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field


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
