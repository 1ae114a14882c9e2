"""The server end to end on a device (`make gpu-check`'s `--serve`, or alone).

`tiger-server` (`TIGER_DEVICE=<device>`, `TIGER_PRECISION=fp16`) and `tiger-gateway`
start on free local ports, serving a prepared model of a store (`--home`,
`--model`), and are driven over HTTP as clients drive them:

1. `/v1/models` names the provider the model is loaded on: a CUDA run that got
   anything else stops here.
2. The seed guide's stream (`/v1/generate_response`, NDJSON), and a stream of
   128 tokens alone: time to first token, tokens/s.
3. A stream dropped by its client after three deltas; then eight streams at once
   (all eight served: the dropped one's slot came back), their aggregate tokens/s.
4. A three-turn chat (`/v1/chat/completions`): turns 2 and 3 report the earlier
   turns' prompt as cached (the prefix cache's copies on the device).
5. A JSON-schema answer (`response_format`): it parses and has the schema's keys.

Every request is greedy, so with `--against cpu` the same requests go to a second
server on the CPU provider (same graph) and the answers are compared word for word
(fp16 on two devices may part at a near tie; where they part is reported).
Writes serve.json and serve.md to `--out`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ..config import DEFAULT_MODEL_ID, default_home
from ..runtime.process import start_process

QUESTION = "What is the capital of France? Answer in one sentence."
TOPICS = ("rivers", "bread", "stars", "chess", "rain", "music", "bees", "tea")
SCHEMA = {
    "type": "object",
    "properties": {
        "city": {"type": "string", "maxLength": 24},
        "country": {"type": "string", "maxLength": 24},
    },
    "required": ["city", "country"],
    "additionalProperties": False,
}
KEY = "serve-check-key"
SLACK = 8  # tokens at the end of an earlier turn's prompt a later one may not share


class CheckFailed(RuntimeError):
    pass


@contextmanager
def served(home: Path, model: str, device: str, workdir: Path) -> Iterator[str]:
    """The server (`model` loaded at start) and the gateway on `device`; yields
    the gateway's base URL."""
    env = {
        **os.environ,
        "TIGER_HOME": str(home),
        "TIGER_API_KEY": KEY,
        "TIGER_DEVICE": device,
        "TIGER_PRECISION": "fp16",
        "PYTHONUNBUFFERED": "1",
    }
    local = ("--host", "127.0.0.1", "--port", "0")
    server = start_process(
        [
            "tiger_grpc.server",
            *local,
            "--no-prepare",
            "--preload",
            model,
            "--metrics-port",
            "-1",
        ],
        workdir,
        f"server-{device}",
        env,
        timeout=300,
    )
    try:
        target = f"127.0.0.1:{server.port}"
        gateway = start_process(
            ["gateway.main", *local, "--grpc-target", target],
            workdir,
            f"gateway-{device}",
            env,
        )
        try:
            yield f"http://127.0.0.1:{gateway.port}"
        finally:
            gateway.stop()
    finally:
        server.stop()


async def stream(session: Any, url: str, body: dict, drop_after: int = 0) -> dict:
    """One NDJSON stream of `/v1/generate_response`: its text, usage, times."""
    started = time.monotonic()
    first = None
    pieces: list[str] = []
    stop: dict = {}
    async with session.post(
        f"{url}/v1/generate_response", json={**body, "stream": True}
    ) as response:
        if response.status != 200:
            raise CheckFailed(f"HTTP {response.status}: {await response.text()}")
        async for line in response.content:
            if not line.strip():
                continue
            chunk = json.loads(line)
            if chunk["type"] == "delta":
                first = first or time.monotonic()
                pieces.append(chunk["delta"])
                if drop_after and len(pieces) >= drop_after:
                    response.close()  # the client goes away mid-stream
                    return {"text": "".join(pieces), "dropped": True}
            elif chunk["type"] == "stop":
                stop = chunk
            elif chunk["type"] == "error":
                raise CheckFailed(f"error chunk: {chunk}")
    ended = time.monotonic()
    if not stop or first is None:
        raise CheckFailed(f"the stream ended without a stop chunk: {pieces}")
    tokens = stop["usage"]["output_tokens"]
    return {
        "text": "".join(pieces),
        "stop_reason": stop["stop_reason"],
        "usage": stop["usage"],
        "ttft_ms": round((first - started) * 1000, 1),
        "tokens_per_s": round((tokens - 1) / (ended - first), 1)
        if tokens > 1 and ended > first
        else None,
        "seconds": ended - started,
    }


async def chat(session: Any, url: str, body: dict) -> dict:
    """One `/v1/chat/completions` answer (greedy)."""
    body = {"temperature": 0, **body}
    async with session.post(f"{url}/v1/chat/completions", json=body) as response:
        reply = await response.json()
        if response.status != 200:
            raise CheckFailed(f"HTTP {response.status}: {reply}")
    return reply


def ask(model: str, content: str, tokens: int) -> dict[str, Any]:
    """A greedy request of one user message."""
    messages = [{"role": "user", "content": content}]
    return {
        "model": model,
        "messages": messages,
        "temperature": 0,
        "max_tokens": tokens,
    }


async def streams(session: Any, url: str, model: str) -> dict[str, Any]:
    """Steps 2 and 3: one stream at a time, a dropped one, then eight at once."""
    await stream(session, url, ask(model, "Hi", 1))  # one-time costs, before timing
    report = {
        "seed_stream": await stream(session, url, ask(model, QUESTION, 48)),
        "one_stream": await stream(
            session, url, ask(model, "Write a long story about a lighthouse.", 128)
        ),
        "dropped": await stream(
            session, url, ask(model, "Tell me a long story about a dragon.", 400), 3
        ),
    }
    started = time.monotonic()
    many = await asyncio.gather(
        *(
            stream(session, url, ask(model, f"Write two sentences about {t}.", 48))
            for t in TOPICS
        )
    )
    tokens = sum(m["usage"]["output_tokens"] for m in many)
    report["eight_streams"] = {
        "texts": [m["text"] for m in many],
        "output_tokens": tokens,
        "aggregate_tokens_per_s": round(tokens / (time.monotonic() - started), 1),
        "ttft_ms": [m["ttft_ms"] for m in many],
    }
    return report


async def chat_turns(session: Any, url: str, model: str) -> list[dict[str, Any]]:
    """Step 4: three turns of one chat, each sent whole (as OpenAI's clients do)."""
    messages = [
        {"role": "system", "content": "You are a geography teacher. " * 20},
        {"role": "user", "content": "Name a large river in Europe."},
    ]
    turns = []
    for follow_up in ("Which countries does it cross?", "How long is it?", None):
        body = {"model": model, "messages": messages, "max_tokens": 24}
        reply = await chat(session, url, body)
        usage = reply["usage"]
        content = reply["choices"][0]["message"]["content"]
        turns.append(
            {
                "text": content,
                "prompt_tokens": usage["prompt_tokens"],
                "cached_tokens": usage["prompt_tokens_details"]["cached_tokens"],
            }
        )
        if follow_up:
            messages += [
                {"role": "assistant", "content": content},
                {"role": "user", "content": follow_up},
            ]
    return turns


async def json_answer(session: Any, url: str, model: str) -> dict[str, Any]:
    """Step 5: an answer constrained to `SCHEMA`."""
    fmt = {
        "type": "json_schema",
        "json_schema": {"name": "place", "strict": True, "schema": SCHEMA},
    }
    body = ask(model, "Where is the Eiffel Tower? Answer in JSON.", 96)
    reply = await chat(session, url, {**body, "response_format": fmt})
    choice = reply["choices"][0]
    return {
        "text": choice["message"]["content"],
        "finish_reason": choice["finish_reason"],
    }


async def drive(url: str, model: str) -> dict[str, Any]:
    """Steps 1-5 against the gateway at `url`."""
    import aiohttp

    headers = {"Authorization": f"Bearer {KEY}"}
    timeout = aiohttp.ClientTimeout(total=300)
    async with aiohttp.ClientSession(headers=headers, timeout=timeout) as session:
        async with session.get(f"{url}/v1/models") as response:
            models = (await response.json())["models"]
        entry = next((m for m in models if m["id"] == model), None)
        if entry is None:
            raise CheckFailed(f"{model} is not in /v1/models: {models}")
        return {
            "model": entry,
            **await streams(session, url, model),
            "chat": await chat_turns(session, url, model),
            "json_schema": await json_answer(session, url, model),
        }


def verdicts(report: dict[str, Any], device: str) -> list[str]:
    """What failed, in words (empty: all passed)."""
    failed = []
    provider = report["model"].get("provider", "")
    if device == "cuda" and provider != "CUDAExecutionProvider":
        failed.append(f"asked for CUDA, the model is on {provider!r}")
    if not report["dropped"].get("dropped"):
        failed.append("the stream to drop ended before three deltas")
    if len(report["eight_streams"]["texts"]) != len(TOPICS):
        failed.append("not every one of the eight streams was served")
    later = report["chat"][1:]
    for turn, before in zip(later, report["chat"], strict=False):
        # The template may render the end of a turn anew (a stripped answer).
        reused = before["prompt_tokens"] - SLACK <= turn["cached_tokens"]
        if not reused or turn["cached_tokens"] >= turn["prompt_tokens"]:
            failed.append(f"a later turn reused too little of the chat: {turn}")
    schema = report["json_schema"]
    if schema["finish_reason"] == "stop":
        value = json.loads(schema["text"])
        if set(value) != set(SCHEMA["required"]) or not all(
            isinstance(v, str) for v in value.values()
        ):
            failed.append(f"the JSON answer does not fit the schema: {value}")
    else:
        failed.append(f"the JSON answer did not finish: {schema}")
    return failed


def answers(report: dict[str, Any]) -> list[str]:
    """The greedy answers, in order, for comparing two devices."""
    return [
        report["seed_stream"]["text"],
        report["one_stream"]["text"],
        *report["eight_streams"]["texts"],
        *(turn["text"] for turn in report["chat"]),
        report["json_schema"]["text"],
    ]


def agreement(device: list[str], cpu: list[str]) -> dict[str, Any]:
    """How many answers are the same word for word, and where the others part."""
    parted = []
    for i, (a, b) in enumerate(zip(device, cpu, strict=True)):
        if a != b:
            pairs = enumerate(zip(a, b, strict=False))
            same = next((k for k, (x, y) in pairs if x != y), None)
            same = min(len(a), len(b)) if same is None else same
            parted.append({"answer": i, "same_chars": same, "of": max(len(a), len(b))})
    identical = len(device) - len(parted)
    return {"answers": len(device), "identical": identical, "parted": parted}


def markdown(report: dict[str, Any]) -> str:
    seed = report["seed_stream"]
    one = report["one_stream"]
    many = report["eight_streams"]
    lines = [
        "# serve-check",
        "",
        f"- model: {report['model']['id']} on {report['model'].get('provider')} "
        f"(asked: {report['device']})",
        f"- seed guide's stream: {seed['usage']['output_tokens']} tokens, time to "
        f"first token {seed['ttft_ms']} ms, {seed['tokens_per_s']} tok/s: "
        f"{seed['text']!r}",
        f"- one stream of {one['usage']['output_tokens']} tokens: time to first "
        f"token {one['ttft_ms']} ms, {one['tokens_per_s']} tok/s",
        f"- dropped after three deltas: {report['dropped']['text']!r}",
        f"- eight streams at once: {many['output_tokens']} tokens, "
        f"{many['aggregate_tokens_per_s']} tok/s together, time to first token "
        f"{min(many['ttft_ms'])}-{max(many['ttft_ms'])} ms",
        "- chat turns (prompt tokens, cached): "
        + ", ".join(
            f"{t['prompt_tokens']}/{t['cached_tokens']}" for t in report["chat"]
        ),
        f"- JSON schema: {report['json_schema']['text']}",
    ]
    if "against_cpu" in report:
        a = report["against_cpu"]
        lines.append(
            f"- against the same server on CPU: {a['identical']} of {a['answers']} "
            f"greedy answers identical; parted: {json.dumps(a['parted'])}"
        )
    lines.append(f"- failed: {'; '.join(report['failed']) or 'nothing'}")
    return "\n".join([*lines, ""])


def check(
    home: Path, model: str, device: str, against: str | None, workdir: Path
) -> dict[str, Any]:
    with served(home, model, device, workdir) as url:
        report = asyncio.run(drive(url, model))
    report["device"] = device
    report["failed"] = verdicts(report, device)
    if against:
        with served(home, model, against, workdir) as url:
            other = asyncio.run(drive(url, model))
        report["against_cpu"] = agreement(answers(report), answers(other))
        report["failed"] += [f"on {against}: {f}" for f in verdicts(other, against)]
    return report


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    parser.add_argument("--home", type=Path, default=default_home())
    parser.add_argument("--model", default=DEFAULT_MODEL_ID)
    parser.add_argument("--against", choices=["cpu"], default=None)
    parser.add_argument("--out", type=Path, default=Path("gpu-check"))
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="tiger-serve-check-") as workdir:
        try:
            report = check(
                args.home, args.model, args.device, args.against, Path(workdir)
            )
        finally:
            for log in Path(workdir).glob("*.log"):
                (args.out / f"serve-{log.name}").write_bytes(log.read_bytes())
    (args.out / "serve.json").write_text(json.dumps(report, indent=2))
    (args.out / "serve.md").write_text(markdown(report))
    print(markdown(report))
    if report["failed"]:
        raise SystemExit("serve-check failed: " + "; ".join(report["failed"]))
    return report


if __name__ == "__main__":
    main()
