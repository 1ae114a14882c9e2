"""OpenAI's API on the real gateway and server, judged by the official `openai`
Python SDK (sync and async) and, for one streaming chat, the official npm package
under Node."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess

import aiohttp
import openai
import pytest
import requests

from tests.helpers import API_KEY, DEFAULT_MODEL_ID, ROOT, TINY_MODEL_ID, stack

pytestmark = pytest.mark.e2e
HI = [{"role": "user", "content": "Why is the sky blue?"}]


@pytest.fixture(scope="module")
def client(base_url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{base_url}/v1", api_key=API_KEY, max_retries=0)


@pytest.fixture
async def aclient(base_url: str):
    async with openai.AsyncOpenAI(
        base_url=f"{base_url}/v1", api_key=API_KEY, max_retries=0
    ) as made:
        yield made


async def test_a_greedy_chat_equals_tigers_own_answer(client, base_url) -> None:
    reply = await asyncio.to_thread(
        client.chat.completions.create,
        model=DEFAULT_MODEL_ID,
        messages=HI,
        max_tokens=24,
        temperature=0,
    )
    async with aiohttp.ClientSession(
        headers={"Authorization": f"Bearer {API_KEY}"}
    ) as s:
        body = {"model": DEFAULT_MODEL_ID, "messages": HI, "max_tokens": 24}
        async with s.post(
            f"{base_url}/v1/generate_response", json={**body, "temperature": 0}
        ) as r:
            own = await r.json()
    (choice,) = reply.choices
    assert reply.object == "chat.completion" and reply.id.startswith("chatcmpl-")
    assert choice.message.role == "assistant"
    assert choice.message.content == own["content"] and own["content"]
    assert choice.finish_reason == "length" and own["stop_reason"] == "max_tokens"
    assert reply.usage.prompt_tokens == own["usage"]["input_tokens"]
    assert reply.usage.completion_tokens == own["usage"]["output_tokens"] == 24
    assert reply.usage.total_tokens == reply.usage.prompt_tokens + 24


def test_a_stream_of_n_choices_with_usage(client) -> None:
    chunks = list(
        client.chat.completions.create(
            model=TINY_MODEL_ID,
            messages=HI,
            max_tokens=6,
            n=2,
            seed=3,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert len({c.id for c in chunks}) == 1
    body, last = chunks[:-1], chunks[-1]
    assert last.choices == [] and last.usage.completion_tokens == 12
    assert all(c.usage is None for c in body)
    for index in (0, 1):
        mine = [c.choices[0] for c in body if c.choices[0].index == index]
        assert mine[0].delta.role == "assistant"
        finishes = [c.finish_reason for c in mine if c.finish_reason]
        assert finishes == ["length"] and mine[-1].finish_reason == "length"


async def test_async_stream_stops_at_a_stop_string_without_leaking_it(aclient):
    full = await aclient.chat.completions.create(
        model=DEFAULT_MODEL_ID, messages=HI, max_tokens=30, temperature=0
    )
    text = full.choices[0].message.content
    stop = text[10:14]  # inside the answer, across whatever tokens
    parts, finishes = [], []
    stream = await aclient.chat.completions.create(
        model=DEFAULT_MODEL_ID,
        messages=HI,
        max_tokens=30,
        temperature=0,
        stop=stop,
        stream=True,
    )
    async for chunk in stream:
        parts.append(chunk.choices[0].delta.content or "")
        finishes.append(chunk.choices[0].finish_reason)
    assert "".join(parts) == text[: text.index(stop)]
    assert [f for f in finishes if f] == ["stop"]


def test_chat_logprobs_are_the_models(client) -> None:
    reply = client.chat.completions.create(
        model=DEFAULT_MODEL_ID,
        messages=HI,
        max_tokens=8,
        temperature=0,
        logprobs=True,
        top_logprobs=3,
    )
    content = reply.choices[0].logprobs.content
    assert len(content) >= 7
    for token in content:
        assert len(token.top_logprobs) == 3
        alternatives = [t.logprob for t in token.top_logprobs]
        assert alternatives == sorted(alternatives, reverse=True)
        assert token.logprob == pytest.approx(alternatives[0])  # greedy
        assert token.logprob <= 0
    joined = bytes(b for t in content for b in t.bytes).decode("utf-8", "replace")
    assert joined.startswith(reply.choices[0].message.content)


def test_scoring_a_prompt_agrees_with_generating_it(client) -> None:
    """What lm-evaluation-harness does: `echo` with `max_tokens: 0` gives every
    prompt token's log-probability (the first null); they agree with the
    log-probabilities the same tokens had when they were generated."""
    prompt = "The sky is"
    made = client.completions.create(
        model=DEFAULT_MODEL_ID, prompt=prompt, max_tokens=5, temperature=0, logprobs=1
    )
    generated = made.choices[0].logprobs
    scored = client.completions.create(
        model=DEFAULT_MODEL_ID,
        prompt=prompt + made.choices[0].text,
        max_tokens=0,
        echo=True,
        logprobs=1,
    )
    choice = scored.choices[0]
    assert choice.text == prompt + made.choices[0].text
    assert choice.finish_reason == "length" and scored.usage.completion_tokens == 0
    logprobs = choice.logprobs
    assert logprobs.token_logprobs[0] is None and logprobs.top_logprobs[0] is None
    assert logprobs.text_offset[0] == 0 and "".join(logprobs.tokens) == choice.text
    tail = len(generated.tokens)
    assert logprobs.tokens[-tail:] == generated.tokens
    # The int4 graph's kernels round differently for a prompt written at once (as
    # generation does) and token by token (as scoring does): up to ~0.15 nats
    # measured. The tiny model's fp32 graph agrees with PyTorch to 2e-3
    # (tests/engine/test_logprobs.py).
    assert logprobs.token_logprobs[-tail:] == pytest.approx(
        generated.token_logprobs, abs=0.3
    )


def test_completions_of_several_prompts_and_echo(client) -> None:
    reply = client.completions.create(
        model=TINY_MODEL_ID, prompt=["One", "Two"], max_tokens=3, n=2, echo=True
    )
    assert [c.index for c in reply.choices] == [0, 1, 2, 3]
    assert [c.text[:3] for c in reply.choices] == ["One", "One", "Two", "Two"]
    assert reply.usage.completion_tokens == 12


def test_models_list_in_both_shapes(client, base_url) -> None:
    models = {m.id: m for m in client.models.list()}
    assert {DEFAULT_MODEL_ID, TINY_MODEL_ID} <= set(models)
    assert models[DEFAULT_MODEL_ID].object == "model"
    assert models[DEFAULT_MODEL_ID].owned_by == "tiger"
    assert models[DEFAULT_MODEL_ID].created > 0
    # The model card's sampling, for requests that leave it unset; none for tiny.
    assert models[DEFAULT_MODEL_ID].sampling == {"temperature": 0.2, "top_p": 0.9}
    assert models[TINY_MODEL_ID].sampling == {}
    assert client.models.retrieve(TINY_MODEL_ID.upper()).id == TINY_MODEL_ID
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("no-such-model")


def test_a_request_without_sampling_fields_takes_the_models(
    client, store_home, tiny_model
) -> None:
    """A copy of the tiny model whose generation config says temperature 0: asked
    without a temperature, it answers greedily whatever the seed; asked with one,
    it samples."""
    import dataclasses

    from tiger_grpc.models.store import ModelManifest, ModelStore

    store = ModelStore(store_home)
    greedy = store.path("tiny-greedy")
    if not greedy.exists():
        shutil.copytree(store.path(tiny_model.id), greedy)
        manifest = ModelManifest.read(greedy)
        dataclasses.replace(
            manifest, id="tiny-greedy", sampling={"temperature": 0.0}
        ).write(greedy)

    def answer(**fields) -> str:
        reply = client.completions.create(
            model="tiny-greedy", prompt="The sea", max_tokens=8, **fields
        )
        return reply.choices[0].text

    reference = answer(temperature=0)
    assert answer(seed=1) == answer(seed=2) == reference
    assert {answer(seed=s, temperature=1.0) for s in (1, 2, 3)} != {reference}
    listed = {m.id: m for m in client.models.list()}
    assert listed["tiny-greedy"].sampling == {"temperature": 0.0}


def test_each_error_class(client, base_url) -> None:
    bad_key = openai.OpenAI(base_url=f"{base_url}/v1", api_key="nope", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        bad_key.chat.completions.create(model=DEFAULT_MODEL_ID, messages=HI)
    with pytest.raises(openai.NotFoundError) as missing:
        client.chat.completions.create(model="no-such-model", messages=HI)
    assert missing.value.body["code"] == "model_not_found"
    with pytest.raises(openai.BadRequestError) as bad:
        client.chat.completions.create(model=DEFAULT_MODEL_ID, messages=HI, top_p=2)
    assert bad.value.body["param"] == "top_p"
    with pytest.raises(openai.BadRequestError) as refused:
        client.chat.completions.create(
            model=DEFAULT_MODEL_ID,
            messages=HI,
            tools=[{"type": "function", "function": {"name": "f"}}],
            tool_choice={"type": "function", "function": {"name": "g"}},
        )
    assert refused.value.body["param"] == "tool_choice"


async def test_at_capacity_is_a_rate_limit_error(store_home, tmp_path, tiny_model):
    args = ("--max-batch", "1", "--max-queued", "0")
    with stack(store_home, tmp_path, server_args=args) as (_, gateway):
        url = f"http://127.0.0.1:{gateway.port}/v1"
        client = openai.AsyncOpenAI(base_url=url, api_key=API_KEY, max_retries=0)
        long = await client.chat.completions.create(
            model=TINY_MODEL_ID, messages=HI, max_tokens=2000, stream=True
        )
        await long.__anext__()  # the one slot is taken
        with pytest.raises(openai.RateLimitError) as limited:
            await client.chat.completions.create(model=TINY_MODEL_ID, messages=HI)
        assert limited.value.response.headers["Retry-After"] == "1"
        await long.close()
        await client.close()


async def test_a_body_over_the_limit_is_a_413_in_openais_shape(base_url) -> None:
    headers = {"Authorization": f"Bearer {API_KEY}", "Content-Type": "application/json"}
    async with aiohttp.ClientSession(headers=headers) as s:
        async with s.post(f"{base_url}/v1/chat/completions", data=b"x" * 70_000) as r:
            assert r.status == 413
            error = (await r.json())["error"]
    assert "over the limit" in error["message"] and error["type"]


@pytest.mark.skipif(shutil.which("node") is None, reason="Node.js is not installed")
def test_the_npm_package_streams_a_chat(base_url) -> None:
    clients = ROOT / "tests" / "clients"
    assert (clients / "node_modules" / "openai").is_dir(), "run `make test`"
    env = {
        **os.environ,
        "OPENAI_BASE_URL": f"{base_url}/v1",
        "OPENAI_API_KEY": API_KEY,
        "MODEL": DEFAULT_MODEL_ID,
    }
    out = subprocess.run(
        ["node", str(clients / "openai_chat.mjs")],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        cwd=clients,
    )
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["text"] and result["finish_reasons"] == ["length"]
    assert result["roles"] == ["assistant"]


def test_the_openai_routes_are_measured_and_traced(base_url, client) -> None:
    reply = client.chat.completions.with_raw_response.create(
        model=TINY_MODEL_ID,
        messages=HI,
        max_tokens=1,
        extra_headers={"X-Request-Id": "openai-trace-1"},
    )
    assert reply.headers["x-request-id"] == "openai-trace-1"
    metrics = requests.get(f"{base_url}/metrics", timeout=10).text
    assert 'route="/v1/chat/completions"' in metrics
