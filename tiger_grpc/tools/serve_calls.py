"""The HTTP calls serve-check makes as a client makes them (`serve_check`), each
a `CheckFailed` that says what came back when the reply is not what a client
expects; and its step 6, a GGUF imported by the server under check and served
beside its model."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

from ..engine.providers import nvidia_smi

QUESTION = "What is the capital of France? Answer in one sentence."


class CheckFailed(RuntimeError):
    pass


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
            try:
                chunk = json.loads(line)
            except ValueError:
                raise CheckFailed(
                    f"a line of the stream is not JSON: {line!r}"
                ) from None
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
    if not stop:
        raise CheckFailed(f"the stream ended without a stop chunk: {pieces}")
    first = first or ended  # a stop with no text
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


async def fetch(session: Any, method: str, url: str, **request: Any) -> Any:
    """A JSON reply; anything else (an error status, a body that is not JSON) is a
    `CheckFailed` that says what came back."""
    async with session.request(method, url, **request) as response:
        text = await response.text()
    if response.status != 200:
        raise CheckFailed(f"{method} {url}: HTTP {response.status}: {text[:500]}")
    try:
        return json.loads(text)
    except ValueError:
        raise CheckFailed(f"{method} {url}: not JSON: {text[:500]}") from None


async def chat(session: Any, url: str, body: dict) -> dict:
    """One `/v1/chat/completions` answer (greedy)."""
    body = {"temperature": 0, **body}
    return await fetch(session, "POST", f"{url}/v1/chat/completions", json=body)


async def ready(session: Any, url: str, model: str, seconds: float = 300) -> dict:
    """The model's `/v1/models` entry once the server says it is ready (its model
    loaded: only then is the provider the one in use, not the one asked for)."""
    deadline = time.monotonic() + seconds
    while True:
        async with session.get(f"{url}/readyz") as response:
            if response.status == 200:
                break
        if time.monotonic() > deadline:
            raise CheckFailed(f"not ready after {seconds:.0f} s")
        await asyncio.sleep(0.5)
    models = await listed(session, url)
    entry = models.get(model)
    if entry is None or not entry.get("loaded"):
        raise CheckFailed(f"{model} is not loaded: {list(models.values())}")
    return entry


async def listed(session: Any, url: str) -> dict[str, dict]:
    """`/v1/models`'s entries by id."""
    models = (await fetch(session, "GET", f"{url}/v1/models"))["models"]
    return {m["id"]: m for m in models}


def ask(model: str, content: str, tokens: int) -> dict[str, Any]:
    """A greedy request of one user message."""
    messages = [{"role": "user", "content": content}]
    return {
        "model": model,
        "messages": messages,
        "temperature": 0,
        "max_tokens": tokens,
    }


async def import_beside(
    session: Any, url: str, model: str, gguf: Path, name: str
) -> dict[str, Any]:
    """Step 6: `gguf` imported as `name` by the server at `url`, then one greedy
    answer from `model` and from `name`."""
    import aiohttp

    in_use = device_memory_in_use()
    body = {"path": str(gguf), "id": name, "stream": True}
    started = time.monotonic()
    long = aiohttp.ClientTimeout(total=3600)  # an 8B export takes minutes
    async with session.post(
        f"{url}/v1/models/import", json=body, timeout=long
    ) as response:
        if response.status != 200:
            said = await response.text()
            raise CheckFailed(f"import: HTTP {response.status}: {said[:500]}")
        lines = [line async for line in response.content if line.strip()]
    seconds = round(time.monotonic() - started, 1)
    try:
        chunks = [json.loads(line) for line in lines]
    except ValueError:
        raise CheckFailed(f"a line of the import is not JSON: {lines}") from None
    if not chunks or chunks[-1].get("type") != "stop":
        raise CheckFailed(f"the import ended with {chunks[-1:] or 'nothing'}")
    replies = []
    for which in (model, name):
        reply = await chat(session, url, ask(which, QUESTION, 32))
        replies.append(reply["choices"][0]["message"]["content"])
    entry = (await listed(session, url)).get(name)
    if entry is None:
        raise CheckFailed(f"{name} is not in /v1/models after its import")
    return {
        "file": str(gguf),
        "seconds": seconds,
        "said": [c["message"] for c in chunks if c["type"] == "info"][:2],
        "provider": entry.get("provider"),
        "answer": replies[1],
        "same_answer": replies[0] == replies[1],
        "memory_in_use_gb": [in_use, device_memory_in_use()],
    }


def device_memory_in_use() -> float | None:
    """The first GPU's memory in use, GB (every process's), or None without one."""
    used = nvidia_smi("memory.used")  # MiB
    try:
        return None if used is None else round(float(used) * 2**20 / 1e9, 2)
    except ValueError:
        return None
