"""`make load`: many concurrent streaming clients against the gateway, for a bounded
time.

Reports requests done, 429s, errors, latency percentiles, and whether every stream
ended with exactly one `stop` or `error` chunk.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import time
from collections import Counter
from dataclasses import dataclass, field

import aiohttp

PROMPTS = [
    "Hello!",
    "Why is the sky blue?",
    "Name three fruits.",
    "Write one line about rain.",
    "What is 2 + 2?",
    "Tell me a fun fact.",
]


@dataclass
class Report:
    statuses: Counter[int] = field(default_factory=Counter)
    latencies: list[float] = field(default_factory=list)
    stop_reasons: Counter[str] = field(default_factory=Counter)
    error_chunks: int = 0
    broken_streams: list[str] = field(default_factory=list)
    transport_errors: int = 0

    def as_dict(self, wall: float) -> dict[str, object]:
        lat = sorted(self.latencies)

        def pct(q: float) -> float:
            return (
                round(lat[min(len(lat) - 1, int(q * len(lat)))] * 1000, 1)
                if lat
                else 0.0
            )

        done = self.statuses.get(200, 0)
        return {
            "requests": sum(self.statuses.values()) + self.transport_errors,
            "completed_streams": done,
            "rate_limited_429": self.statuses.get(429, 0),
            "other_http_errors": {
                str(k): v for k, v in self.statuses.items() if k not in (200, 429)
            },
            "transport_errors": self.transport_errors,
            "error_chunks": self.error_chunks,
            "stop_reasons": dict(self.stop_reasons),
            "latency_ms": {"p50": pct(0.50), "p99": pct(0.99)},
            "streams_per_second": round(done / wall, 2),
            "every_stream_ended_once": not self.broken_streams,
            "broken_streams": self.broken_streams[:5],
        }


async def client(
    session: aiohttp.ClientSession,
    url: str,
    model: str,
    max_tokens: int,
    deadline: float,
    report: Report,
    rng: random.Random,
) -> None:
    while time.monotonic() < deadline:
        body = {
            "model": model,
            "stream": True,
            "max_tokens": rng.randint(1, max_tokens),
            "messages": [{"role": "user", "content": rng.choice(PROMPTS)}],
        }
        started = time.monotonic()
        try:
            async with session.post(url, json=body) as reply:
                report.statuses[reply.status] += 1
                if reply.status != 200:
                    await reply.read()
                    if reply.status == 429:
                        await asyncio.sleep(
                            float(reply.headers.get("Retry-After", "1")) / 10
                        )
                    continue
                chunks = [
                    json.loads(line) async for line in reply.content if line.strip()
                ]
                kinds = [c["type"] for c in chunks]
                ends = [k for k in kinds if k in ("stop", "error")]
                if kinds and kinds[-1] == "stop":
                    report.stop_reasons[chunks[-1]["stop_reason"]] += 1
                if len(ends) != 1 or kinds[-1] not in ("stop", "error"):
                    report.broken_streams.append(",".join(kinds[-3:]))
                report.error_chunks += kinds.count("error")
                report.latencies.append(time.monotonic() - started)
        except aiohttp.ClientError:
            report.transport_errors += 1


async def run(args: argparse.Namespace) -> dict[str, object]:
    report = Report()
    url = f"{args.url.rstrip('/')}/v1/generate_response"
    deadline = time.monotonic() + args.duration
    started = time.monotonic()
    connector = aiohttp.TCPConnector(limit=args.concurrency)
    async with aiohttp.ClientSession(
        connector=connector, headers={"Authorization": f"Bearer {args.api_key}"}
    ) as s:
        await asyncio.gather(
            *(
                client(
                    s,
                    url,
                    args.model,
                    args.max_tokens,
                    deadline,
                    report,
                    random.Random(i),
                )
                for i in range(args.concurrency)
            )
        )
    return report.as_dict(time.monotonic() - started)


def main() -> None:
    parser = argparse.ArgumentParser(prog="tiger-load", description=__doc__)
    parser.add_argument(
        "--url",
        default=f"http://127.0.0.1:{os.environ.get('TIGER_HTTP_PORT', '45678')}",
    )
    parser.add_argument("--api-key", default=os.environ.get("TIGER_API_KEY", ""))
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--duration", type=float, default=30.0, help="seconds")
    parser.add_argument("--max-tokens", type=int, default=32)
    args = parser.parse_args()
    if not args.url.startswith(("http://127.", "http://localhost", "http://[::1]")):
        parser.error("the load script only drives a gateway on loopback")
    result = asyncio.run(run(args))
    print(json.dumps(result, indent=2))
    raise SystemExit(0 if result["every_stream_ended_once"] else 1)


if __name__ == "__main__":
    main()
