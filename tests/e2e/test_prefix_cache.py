"""Prefix caching against the real processes: a chat's next turn reuses the
previous prompt (OpenAI's `prompt_tokens_details.cached_tokens`, the guide's
`usage.cached_tokens`), a salt keeps requests apart and gives the same greedy
text, the metrics count it, and `--no-prefix-cache` turns it off."""

from __future__ import annotations

import re
import uuid

import openai
import pytest
import requests

from tests.helpers import API_KEY, DEFAULT_MODEL_ID, TINY_MODEL_ID, Process, stack

pytestmark = pytest.mark.e2e


def rules(tag: str) -> str:
    """A system prompt of a few hundred tokens, its own per test run."""
    lines = [f"{tag}: you are the assistant of this shop. Follow these rules."]
    lines += [
        f"Rule {i}: orders of {i} items ship within {i % 5 + 1} days."
        for i in range(40)
    ]
    return "\n".join(lines)


def chat(
    client: openai.OpenAI, messages: list[dict], **more
) -> openai.types.chat.ChatCompletion:
    return client.chat.completions.create(
        model=DEFAULT_MODEL_ID, messages=messages, temperature=0, max_tokens=12, **more
    )


def test_a_chat_turn_reuses_the_previous_prompt(base_url: str) -> None:
    client = openai.OpenAI(base_url=f"{base_url}/v1", api_key=API_KEY, max_retries=0)
    messages = [
        {"role": "system", "content": rules(uuid.uuid4().hex)},
        {"role": "user", "content": "How fast do orders of 7 items ship?"},
    ]
    first = chat(client, messages)
    # Nothing but the chat template's opening may be shared with earlier chats.
    assert first.usage.prompt_tokens_details.cached_tokens < 10
    answer = first.choices[0].message.content
    messages += [
        {"role": "assistant", "content": answer},
        {"role": "user", "content": "And orders of 12 items?"},
    ]
    second = chat(client, messages)
    # All of the first prompt, which the second starts with; the answer after it
    # is written again (its KV came from decode steps: never shared).
    cached = second.usage.prompt_tokens_details.cached_tokens
    assert cached == first.usage.prompt_tokens < second.usage.prompt_tokens
    # The guide's route reports it too: the same request again is all cached
    # but its last two tokens.
    reply = requests.post(
        f"{base_url}/v1/generate_response",
        json={
            "model": DEFAULT_MODEL_ID,
            "messages": messages,
            "temperature": 0,
            "max_tokens": 12,
        },
        headers={"Authorization": f"Bearer {API_KEY}"},
        timeout=60,
    ).json()
    usage = reply["usage"]
    assert usage["cached_tokens"] == usage["input_tokens"] - 2
    assert reply["content"] == second.choices[0].message.content


def test_a_salt_keeps_requests_apart_and_changes_no_answer(base_url: str) -> None:
    client = openai.OpenAI(base_url=f"{base_url}/v1", api_key=API_KEY, max_retries=0)
    system = {"role": "system", "content": rules(uuid.uuid4().hex)}
    chat(client, [system, {"role": "user", "content": "Hello!"}])
    question = [system, {"role": "user", "content": "How fast do 3 items ship?"}]
    shared = chat(client, question)
    apart = chat(client, question, extra_body={"cache_salt": "tenant-b"})
    assert shared.usage.prompt_tokens_details.cached_tokens > 300
    assert apart.usage.prompt_tokens_details.cached_tokens == 0
    assert apart.choices[0].message.content == shared.choices[0].message.content


def test_the_metrics_count_hits_and_what_is_kept(backend: Process, base_url) -> None:
    client = openai.OpenAI(base_url=f"{base_url}/v1", api_key=API_KEY, max_retries=0)
    question = [{"role": "user", "content": f"Say {uuid.uuid4().hex}."}]
    chat(client, question)
    chat(client, question)
    text = requests.get(
        f"http://127.0.0.1:{backend.metrics_port}/metrics", timeout=10
    ).text

    def value(name: str) -> float:
        found = re.search(rf'^{name}{{model="{DEFAULT_MODEL_ID}"}} (\S+)$', text, re.M)
        assert found, name
        return float(found.group(1))

    assert value("tiger_prefix_cache_hits_total") >= 1
    assert value("tiger_prefix_cache_hit_tokens_total") >= 20
    assert value("tiger_prefix_cache_lookups_total") >= value(
        "tiger_prefix_cache_hits_total"
    )
    assert value("tiger_prefix_cache_tokens") > 0
    assert value("tiger_prefix_cache_rows") >= 1


def test_it_can_be_turned_off(store_home, tmp_path, tiny_model) -> None:
    with stack(store_home, tmp_path, server_args=("--no-prefix-cache",)) as (_, gw):
        url = f"http://127.0.0.1:{gw.port}/v1"
        client = openai.OpenAI(base_url=url, api_key=API_KEY, max_retries=0)
        question = [{"role": "user", "content": "Hello there!"}]
        for _ in range(2):
            reply = client.chat.completions.create(
                model=TINY_MODEL_ID, messages=question, max_tokens=2
            )
            assert reply.usage.prompt_tokens_details.cached_tokens == 0
