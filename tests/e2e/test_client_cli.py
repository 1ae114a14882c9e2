"""The Python client, the `tiger` CLI and the pytest plugin, against real processes."""

from __future__ import annotations

import asyncio
import json
import uuid
from pathlib import Path

import pytest

from tests.helpers import API_KEY, TINY_MODEL_ID, Process, run_cli
from tiger_grpc.client import (
    AsyncTigerClient,
    AuthenticationError,
    Completion,
    DeadlineExceededError,
    Delta,
    InvalidArgumentError,
    NotFoundError,
    Stop,
    TigerClient,
)

pytestmark = pytest.mark.e2e


@pytest.fixture
async def client(backend: Process):
    async with AsyncTigerClient(f"127.0.0.1:{backend.port}", api_key=API_KEY) as c:
        yield c


async def test_async_client_streams_completes_and_lists(
    client: AsyncTigerClient,
) -> None:
    chunks = [
        c
        async for c in client.generate(
            "hi", model=TINY_MODEL_ID, max_tokens=5, temperature=0
        )
    ]
    assert isinstance(chunks[-1], Stop) and chunks[-1].stop_reason == "max_tokens"
    answer = await client.complete(
        [{"role": "user", "content": "hi"}],
        model=TINY_MODEL_ID,
        max_tokens=5,
        temperature=0,
    )
    assert isinstance(answer, Completion)
    assert answer.text == "".join(c.text for c in chunks if isinstance(c, Delta))
    assert TINY_MODEL_ID in [m.id for m in await client.models()]


async def test_choices_and_logprobs_through_the_client(
    client: AsyncTigerClient,
) -> None:
    chunks = [
        c
        async for c in client.generate(
            "hi", model=TINY_MODEL_ID, max_tokens=4, n=2, seed=1, logprobs=True
        )
    ]
    stops = [c for c in chunks if isinstance(c, Stop)]
    assert sorted(s.index for s in stops) == [0, 1]
    deltas = [c for c in chunks if isinstance(c, Delta)]
    assert {d.index for d in deltas} == {0, 1}
    assert all(t.logprob <= 0 for d in deltas for t in d.logprobs)
    assert sum(len(d.logprobs) for d in deltas) >= 6  # held-back tokens may wait


async def test_async_client_errors_are_typed(
    client: AsyncTigerClient, backend: Process
) -> None:
    with pytest.raises(NotFoundError, match="unknown model"):
        await client.complete("hi", model="nope")
    with pytest.raises(InvalidArgumentError, match="top_p"):
        await client.complete("hi", model=TINY_MODEL_ID, top_p=5.0)
    with pytest.raises(DeadlineExceededError):
        await client.complete(
            "hi", model=TINY_MODEL_ID, max_tokens=3000, temperature=0, timeout=0.3
        )
    async with AsyncTigerClient(f"127.0.0.1:{backend.port}", api_key="wrong") as bad:
        with pytest.raises(AuthenticationError):
            await bad.models()


async def test_leaving_the_loop_cancels_the_call(client: AsyncTigerClient) -> None:
    async for chunk in client.generate(
        "hi", model=TINY_MODEL_ID, max_tokens=3000, temperature=0
    ):
        if isinstance(chunk, Delta):
            break
    for _ in range(100):
        running = next(
            m for m in await client.models() if m.id == TINY_MODEL_ID
        ).running
        if running == 0:
            break
        await asyncio.sleep(0.02)
    assert running == 0


def test_sync_client(backend: Process) -> None:
    with TigerClient(f"127.0.0.1:{backend.port}", api_key=API_KEY) as tiger:
        # Seeded: the random model's end of turn (p ~ 2e-5 a token) cannot cut it.
        answer = tiger.complete("hi", model=TINY_MODEL_ID, max_tokens=4, seed=1)
        assert answer.usage.output_tokens == 4 and answer.stop_reason == "max_tokens"
        assert TINY_MODEL_ID in [m.id for m in tiger.models()]


@pytest.mark.parametrize("transport", ["grpc", "http"])
def test_cli_generate_models_and_errors(
    transport, backend: Process, base_url: str
) -> None:
    where = (
        ["--grpc", f"127.0.0.1:{backend.port}"]
        if transport == "grpc"
        else ["--http", base_url]
    )
    # Seeded: the random model's end of turn (p ~ 2e-5 a token) cannot cut it.
    out = run_cli(
        *where,
        "generate",
        "hi",
        "--model",
        TINY_MODEL_ID,
        "--max-tokens",
        "5",
        "--seed",
        "1",
        "-v",
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() and "max_tokens, 5 tokens" in out.stderr
    models = run_cli(*where, "models")
    assert models.returncode == 0 and TINY_MODEL_ID in models.stdout
    bad = run_cli(*where, "generate", "hi", "--model", "no-such-model")
    assert bad.returncode == 1 and "unknown model" in bad.stderr


def test_cli_chat_keeps_the_conversation(backend: Process) -> None:
    out = run_cli(
        "--grpc",
        f"127.0.0.1:{backend.port}",
        "chat",
        "--model",
        TINY_MODEL_ID,
        "--max-tokens",
        "3",
        "-v",
        stdin="hello\nand again\n\n",
    )
    assert out.returncode == 0, out.stderr
    usages = [line for line in out.stderr.splitlines() if "tokens," in line]
    assert len(usages) == 2 and out.stdout.count(f"{TINY_MODEL_ID}> ") == 2


def test_cli_train_shows_progress(backend: Process, tmp_path: Path) -> None:
    examples = tmp_path / "examples.jsonl"
    examples.write_text(
        "\n".join(
            json.dumps(
                {
                    "messages": [
                        {"role": "user", "content": f"Question {i}?"},
                        {"role": "assistant", "content": f"Answer {i}."},
                    ]
                }
            )
            for i in range(4)
        )
    )
    output = f"cli-trained-{uuid.uuid4().hex[:6]}"
    out = run_cli(
        "--grpc",
        f"127.0.0.1:{backend.port}",
        "train",
        str(examples),
        "--model",
        TINY_MODEL_ID,
        "--output",
        output,
        "--max-steps",
        "2",
        "--batch-size",
        "2",
    )
    assert out.returncode == 0, out.stderr
    assert "step 2/2" in out.stderr and "loss" in out.stderr and "ETA" in out.stderr
    assert f"trained {output}: 2 steps" in out.stdout
