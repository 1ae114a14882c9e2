"""The peers `make bench` runs beside Tiger: optimum's
`ORTModelForCausalLM.generate` on the fp32 export and transformers' `generate`,
one request at a time, and llama.cpp's server on the same GGUF (`--llama-server`),
at the same levels of concurrency as Tiger, over the same OpenAI route."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from pathlib import Path

import aiohttp

from ..models.store import ModelManifest
from .bench_chat import llama_process
from .bench_stats import Level, Stream, messages, run_level, sse_stream
from .stack import API_KEY


def _baseline(
    name: str, generate: Callable[[str, int], int], prompts: list[str], max_tokens: int
) -> Level:
    """A one-request-at-a-time library: TTFT from a 1-token run, decode from the
    rest."""
    level = Level(name, 1)
    started = time.perf_counter()
    for prompt in prompts:
        t0 = time.perf_counter()
        generate(prompt, 1)
        ttft = time.perf_counter() - t0
        t1 = time.perf_counter()
        tokens = generate(prompt, max_tokens)
        total = time.perf_counter() - t1
        level.streams.append(Stream(ttft, tokens, max(total - ttft, 1e-9)))
    level.wall_s = time.perf_counter() - started - sum(s.ttft_s for s in level.streams)
    return level


def hf_baselines(model_dir: Path, prompts: list[str], max_tokens: int) -> list[Level]:
    import torch
    from optimum.onnxruntime import ORTModelForCausalLM
    from transformers import AutoModelForCausalLM, AutoTokenizer

    manifest = ModelManifest.read(model_dir)
    hf_dir = model_dir / manifest.hf_path
    tokenizer = AutoTokenizer.from_pretrained(hf_dir)
    eos = manifest.eos_token_ids

    def runner(model):
        def generate(prompt: str, n: int) -> int:
            ids = tokenizer.apply_chat_template(
                messages(prompt), add_generation_prompt=True, return_tensors="pt"
            )
            with torch.no_grad():
                out = model.generate(
                    ids,
                    attention_mask=torch.ones_like(ids),
                    max_new_tokens=n,
                    do_sample=False,
                    eos_token_id=eos,
                    pad_token_id=eos[0],
                )
            return int(out.shape[1] - ids.shape[1])

        return generate

    optimum_model = ORTModelForCausalLM.from_pretrained(
        (model_dir / manifest.onnx_path).parent,
        use_cache=True,
        provider="CPUExecutionProvider",
    )
    levels = [
        _baseline(
            "optimum ORTModelForCausalLM.generate (fp32)",
            runner(optimum_model),
            prompts,
            max_tokens,
        )
    ]
    del optimum_model
    torch_model = AutoModelForCausalLM.from_pretrained(hf_dir).eval()
    levels.append(
        _baseline(
            "transformers generate (PyTorch fp32)",
            runner(torch_model),
            prompts,
            max_tokens,
        )
    )
    return levels


LLAMA_CONTEXT = 1024  # per slot: the bench's questions and answers fit in it


async def llama_levels(
    binary: Path, levels: list[int], rounds: tuple[int, int], max_tokens: int
) -> list[Level]:
    """llama.cpp's server (2 threads, a slot per stream of the largest level),
    streamed through OpenAI's chat completions as Tiger's SSE rows are, with as
    many `rounds` (of a single stream, of the other levels) as Tiger's."""
    slots = max(levels)
    with llama_process(binary, slots=slots, context=slots * LLAMA_CONTEXT) as (
        url,
        _,
    ):
        headers = {"Authorization": f"Bearer {API_KEY}"}
        # A connection per request: llama.cpp's closes a kept-alive connection
        # after a streamed answer.
        async with aiohttp.ClientSession(
            headers=headers,
            timeout=aiohttp.ClientTimeout(total=None),
            connector=aiohttp.TCPConnector(force_close=True),
        ) as session:
            sse = f"{url}/v1/chat/completions"
            await run_level("warm-up", 1, lambda p: sse_stream(session, sse, p, 4), 1)
            found = []
            for c in levels:
                print(
                    f"  llama.cpp's server, {c} concurrent streams...", file=sys.stderr
                )
                found.append(
                    await run_level(
                        "llama.cpp server SSE",
                        c,
                        lambda p: sse_stream(session, sse, p, max_tokens),
                        rounds[0] if c == 1 else rounds[1],
                    )
                )
    return found
