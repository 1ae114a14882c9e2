"""The structured-output scenario of `make bench`: what a JSON schema costs.

Tiger's server and gateway, OpenAI chat completions, streaming. Decode speed: the
same long request (a catalogue of products), greedy, `max_tokens` 128, without a
format and with a JSON schema that keeps it going (an array of 20 to 40
products), alternately; decode tokens/s is a request's tokens after the first
over the time from its first chunk to its last. Aggregate: 8 at once, all
unconstrained, then half of them constrained. Time to first token: a short
question with a schema never seen before (its grammar compiled for that request)
against the same question without one. Validity: schemas drawn from the
property-based test's strategy, each answered greedily and three times at
temperature 1.0; every answer that ends by itself must validate.

Run alone: `python -m tiger_grpc.tools.bench_structured`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
import uuid
from pathlib import Path
from typing import Any

import aiohttp
import jsonschema_rs

from ..config import DEFAULT_MODEL_ID, default_home
from ..testing.schemas import sample
from .bench_report import target_lines
from .bench_stats import percentile
from .stack import API_KEY, served

CATALOGUE = [{"role": "user", "content": "List the products of a hardware store."}]
QUESTION = [{"role": "user", "content": "Who are you?"}]
PRODUCT = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 40},
        "price": {"type": "number"},
        "in_stock": {"type": "boolean"},
        "category": {"enum": ["tools", "garden", "paint", "electrical"]},
    },
    "required": ["name", "price", "in_stock", "category"],
    "additionalProperties": False,
}
CATALOGUE_SCHEMA = {
    "type": "object",
    "properties": {
        "products": {
            "type": "array",
            "items": PRODUCT,
            "minItems": 20,
            "maxItems": 40,
        }
    },
    "required": ["products"],
    "additionalProperties": False,
}
DECODE_TOKENS = 128


def schema_format(schema: dict[str, Any], name: str = "answer") -> dict[str, Any]:
    return {"type": "json_schema", "json_schema": {"name": name, "schema": schema}}


async def _ask(
    session: aiohttp.ClientSession, url: str, body: dict[str, Any]
) -> dict[str, Any]:
    """One streamed answer: TTFT and decode time (s), tokens, text, finish."""
    body = {
        "model": DEFAULT_MODEL_ID,
        "stream": True,
        "stream_options": {"include_usage": True},
        **body,
    }
    start = time.perf_counter()
    first = last = None
    texts: dict[int, list[str]] = {}
    finish: dict[int, str] = {}
    tokens = 0
    async with session.post(url, json=body) as reply:
        if reply.status != 200:
            raise RuntimeError(f"{reply.status}: {await reply.text()}")
        async for line in reply.content:
            if not line.startswith(b"data: {"):
                continue
            chunk = json.loads(line[6:])
            tokens = (chunk.get("usage") or {}).get("completion_tokens", tokens)
            for choice in chunk.get("choices") or []:
                content = choice["delta"].get("content")
                if content:
                    last = time.perf_counter()
                    first = first or last
                    texts.setdefault(choice["index"], []).append(content)
                if choice.get("finish_reason"):
                    finish[choice["index"]] = choice["finish_reason"]
    assert first is not None and last is not None, "no token came back"
    return {
        "ttft": first - start,
        "decode": last - first,
        "tokens": tokens,
        "texts": {i: "".join(t) for i, t in texts.items()},
        "finish": finish,
        "end": last,
    }


def _decode_rate(answer: dict[str, Any]) -> float:
    return (answer["tokens"] - 1) / answer["decode"]


async def measure(base: str, rounds: int, schemas: int) -> dict[str, Any]:
    url = f"{base}/v1/chat/completions"
    headers = {"Authorization": f"Bearer {API_KEY}"}
    timeout = aiohttp.ClientTimeout(total=600)
    async with aiohttp.ClientSession(headers=headers, timeout=timeout) as session:
        long = {"messages": CATALOGUE, "temperature": 0, "max_tokens": DECODE_TOKENS}
        shaped = {**long, "response_format": schema_format(CATALOGUE_SCHEMA)}
        await _ask(session, url, long)  # warm
        await _ask(session, url, shaped)
        free, bound = [], []
        for _ in range(rounds):
            free.append(_decode_rate(await _ask(session, url, long)))
            bound.append(_decode_rate(await _ask(session, url, shaped)))
        aggregate_free = await _aggregate(session, url, [long] * 8)
        aggregate_mix = await _aggregate(session, url, [long, shaped] * 4)
        ttft_free, ttft_new = [], []
        for _ in range(rounds * 4):
            ask = {"messages": QUESTION, "temperature": 0, "max_tokens": 4}
            ttft_free.append((await _ask(session, url, ask))["ttft"])
            fresh = {**PRODUCT, "title": uuid.uuid4().hex}  # a grammar never seen
            ask["response_format"] = schema_format(fresh)
            ttft_new.append((await _ask(session, url, ask))["ttft"])
        validity = await _validity(session, url, sample(schemas))
    return {
        "decode_free": percentile(free, 50),
        "decode_schema": percentile(bound, 50),
        "aggregate_free": aggregate_free,
        "aggregate_mix": aggregate_mix,
        "ttft_free_ms": percentile(ttft_free, 50) * 1000,
        "ttft_new_schema_ms": percentile(ttft_new, 50) * 1000,
        **validity,
    }


async def _aggregate(
    session: aiohttp.ClientSession, url: str, bodies: list[dict[str, Any]]
) -> float:
    """Completion tokens per second of `bodies` sent at once."""
    start = time.perf_counter()
    answers = await asyncio.gather(*(_ask(session, url, b) for b in bodies))
    end = max(a["end"] for a in answers)
    return sum(a["tokens"] for a in answers) / (end - start)


async def _validity(
    session: aiohttp.ClientSession, url: str, schemas: list[dict[str, Any]]
) -> dict[str, int]:
    """Each schema answered greedily and 3 times at temperature 1.0, 8 requests
    in flight; counts of the answers that ended by themselves, of those that
    validate, and of those `max_tokens` cut."""
    counts = {"schemas": len(schemas), "finished": 0, "valid": 0, "cut": 0}
    gate = asyncio.Semaphore(8)

    async def judge(schema: dict[str, Any], temperature: float) -> None:
        body = {
            "messages": [{"role": "user", "content": "Fill in this form as JSON."}],
            "temperature": temperature,
            "n": 1 if temperature == 0 else 3,
            "seed": 7,
            "max_tokens": 160,
            "response_format": schema_format(schema, "form"),
        }
        async with gate:
            answer = await _ask(session, url, body)
        validator = jsonschema_rs.validator_for(schema)
        for index, text in answer["texts"].items():
            if answer["finish"].get(index) == "length":
                counts["cut"] += 1
                continue
            counts["finished"] += 1
            try:
                counts["valid"] += validator.is_valid(json.loads(text))
            except ValueError:
                pass

    await asyncio.gather(*(judge(s, t) for s in schemas for t in (0.0, 1.0)))
    return counts


def scenario(home: Path, rounds: int, schemas: int) -> dict[str, Any]:
    with served(home) as (_, port):
        return asyncio.run(measure(f"http://127.0.0.1:{port}", rounds, schemas))


def targets(row: dict[str, Any]) -> list[tuple[str, float, str, bool]]:
    one = row["decode_schema"] / row["decode_free"]
    eight = row["aggregate_mix"] / row["aggregate_free"]
    extra = row["ttft_new_schema_ms"] - row["ttft_free_ms"]
    valid = 100 * row["valid"] / max(row["finished"], 1)
    return [
        ("schema decode tok/s, 1 stream: schema / free", one, ">= 0.9", one >= 0.9),
        (
            "aggregate tok/s, 8 streams: half schema / free",
            eight,
            ">= 0.9",
            eight >= 0.9,
        ),
        ("TTFT with a new schema - without (ms)", extra, "< 50", extra < 50),
        (
            "finished outputs valid over generated schemas (%)",
            valid,
            "100",
            valid == 100,
        ),
    ]


def markdown(row: dict[str, Any]) -> str:
    lines = [
        "Structured output: OpenAI chat completions, streaming, greedy; a JSON "
        f"schema against no format ({DECODE_TOKENS} tokens for decode speed)",
        "",
        "| | no format | JSON schema | ratio |",
        "|---|---:|---:|---:|",
        f"| decode tok/s, 1 stream | {row['decode_free']:.1f} | "
        f"{row['decode_schema']:.1f} | "
        f"{row['decode_schema'] / row['decode_free']:.2f} |",
        f"| aggregate tok/s, 8 streams (schema: half of them) | "
        f"{row['aggregate_free']:.1f} | {row['aggregate_mix']:.1f} | "
        f"{row['aggregate_mix'] / row['aggregate_free']:.2f} |",
        f"| TTFT p50 ms (schema: new each time) | {row['ttft_free_ms']:.1f} | "
        f"{row['ttft_new_schema_ms']:.1f} | "
        f"{row['ttft_new_schema_ms'] / row['ttft_free_ms']:.2f} |",
        "",
        f"Generated schemas: {row['schemas']}, answers that ended by themselves: "
        f"{row['finished']}, valid: {row['valid']}, cut by max_tokens: {row['cut']}",
    ]
    return "\n".join([*lines, *target_lines(targets(row))]) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--schemas", type=int, default=40)
    args = parser.parse_args()
    print(markdown(scenario(default_home(), args.rounds, args.schemas)))


if __name__ == "__main__":
    main()
