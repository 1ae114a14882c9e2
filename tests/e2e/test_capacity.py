"""Bounded admission end to end: RESOURCE_EXHAUSTED over gRPC, 429 over HTTP."""

from __future__ import annotations

import asyncio
import json

import aiohttp
import pytest

from tests.helpers import API_KEY, TINY_MODEL_ID, stack

pytestmark = pytest.mark.e2e
LONG = {
    "model": TINY_MODEL_ID,
    "messages": [{"role": "user", "content": "Go on."}],
    "max_tokens": 3000,
    "temperature": 0,
    "stream": True,
}


async def test_past_capacity_the_gateway_answers_429(
    store_home, tiny_model, tmp_path
) -> None:
    small = ("--max-batch", "1", "--max-queued", "0")
    with stack(store_home, tmp_path, server_args=small) as (_, gateway):
        url = f"http://127.0.0.1:{gateway.port}/v1/generate_response"
        async with aiohttp.ClientSession(
            headers={"Authorization": f"Bearer {API_KEY}"}
        ) as s:
            busy = await s.post(url, json=LONG)
            async for line in busy.content:  # wait until it is generating
                if json.loads(line)["type"] == "delta":
                    break
            async with s.post(url, json=LONG) as refused:
                assert refused.status == 429
                assert refused.headers["Retry-After"] == "1"
                body = await refused.json()
                assert body["type"] == "error" and "capacity" in body["message"]
            busy.close()
            await asyncio.sleep(0.3)  # the slot frees when the first client leaves
            async with s.post(
                url, json={**LONG, "max_tokens": 3, "stream": False}
            ) as again:
                assert again.status == 200
