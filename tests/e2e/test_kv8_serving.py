"""`TIGER_PRECISION=int4-kv8` end to end: the embedded model prepared with an int8
KV cache, listed as such, and answering over the gateway, a prompt long enough
for the cache to grow past its first 512 positions included."""

from __future__ import annotations

import aiohttp
import pytest

from tests.helpers import API_KEY, stack
from tiger_grpc.config import DEFAULT_MODEL_ID
from tiger_grpc.models.embedded import ensure_default_model
from tiger_grpc.models.quality import HELD_OUT
from tiger_grpc.models.store import ModelStore

pytestmark = pytest.mark.e2e


def chat(content: str) -> dict:
    return {
        "model": DEFAULT_MODEL_ID,
        "messages": [{"role": "user", "content": content}],
        "max_tokens": 12,
        "temperature": 0,
    }


async def test_an_int4_kv8_server_lists_and_serves_its_int8_cache(
    store_home, tmp_path
) -> None:
    manifest = ensure_default_model(ModelStore(store_home), "int4-kv8")
    assert manifest.quantization["int4-kv8"] == "source blocks; int8 KV cache"
    env = {"TIGER_PRECISION": "int4-kv8", "TIGER_DEVICE": "cpu"}
    with stack(store_home, tmp_path, env=env) as (_, gateway):
        base = f"http://127.0.0.1:{gateway.port}"
        headers = {"Authorization": f"Bearer {API_KEY}"}
        async with aiohttp.ClientSession(headers=headers) as s:
            short = await (
                await s.post(
                    f"{base}/v1/chat/completions",
                    json=chat("What is the capital of France?"),
                )
            ).json()
            assert short["choices"][0]["message"]["content"].strip(), short
            text = HELD_OUT.read_text()[:6000]  # about 1,300 tokens
            long = await s.post(
                f"{base}/v1/chat/completions",
                json=chat(f"{text}\n\nWhat does a baker cut across a loaf?"),
            )
            assert long.status == 200, await long.text()
            body = await long.json()
            assert body["usage"]["prompt_tokens"] > 1024
            assert body["choices"][0]["message"]["content"].strip(), body
            listed = await (await s.get(f"{base}/v1/models")).json()
        entry = next(m for m in listed["data"] if m["id"] == DEFAULT_MODEL_ID)
        assert entry["precision"] == "int4-kv8"
        assert entry["quantization"] == "source blocks; int8 KV cache"
