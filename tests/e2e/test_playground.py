"""The playground page in headless Chromium (Debian's, never a downloaded one)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import aiohttp
import pytest
from playwright.async_api import async_playwright

from tests.helpers import API_KEY
from tiger_grpc.models.embedded import DEFAULT_MODEL_ID
from tiger_grpc.tools.serve_calls import ask

pytestmark = pytest.mark.e2e
CHROMIUM = os.environ.get("TIGER_CHROMIUM", "/usr/bin/chromium")
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


async def test_type_a_prompt_and_watch_it_stream(base_url: str, tmp_path: Path) -> None:
    assert Path(CHROMIUM).exists(), (
        f"{CHROMIUM} is missing: `make test` installs Debian's chromium"
    )
    async with async_playwright() as p:
        browser = await p.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        try:
            page = await browser.new_page(viewport={"width": 1000, "height": 700})
            await page.goto(base_url)
            await page.fill("#key", API_KEY)
            await page.dispatch_event("#key", "change")
            await page.wait_for_selector(
                f"#model option[value='{DEFAULT_MODEL_ID}']", state="attached"
            )
            # The server's default model is preselected, whatever sorts first
            # (the session's trained models, the tiny test model).
            assert await page.input_value("#model") == DEFAULT_MODEL_ID
            await page.fill("#temperature", "0")
            await page.fill("#max_tokens", "60")
            await page.fill("#prompt", "Why is the sky blue?")
            await page.click("#send")
            answer = page.locator(".turn.assistant .text").last
            lengths = set()
            while await page.locator(".turn.assistant[data-state='done']").count() == 0:
                lengths.add(len(await answer.text_content() or ""))
                await page.wait_for_timeout(20)
            text = await answer.text_content()
            meta = await page.locator(".turn.assistant .meta").last.text_content()
            shot = tmp_path / "playground.png"
            await page.screenshot(path=str(shot), full_page=True)
        finally:
            await browser.close()
    # What the page shows is the answer the API gives the same greedy request.
    async with aiohttp.ClientSession(
        headers={"Authorization": f"Bearer {API_KEY}"}
    ) as session:
        body = ask(DEFAULT_MODEL_ID, "Why is the sky blue?", 60)
        async with session.post(f"{base_url}/v1/generate_response", json=body) as r:
            expected = (await r.json())["content"]
    assert text and text.strip() == expected.strip()
    assert meta and meta.startswith("stop: ") and "tokens/s" in meta
    assert len(lengths) > 3, "the answer should appear piece by piece"
    assert shot.stat().st_size > 10_000
    if os.environ.get("TIGER_SCREENSHOT_DIR"):
        shutil.copy(shot, Path(os.environ["TIGER_SCREENSHOT_DIR"]) / shot.name)
