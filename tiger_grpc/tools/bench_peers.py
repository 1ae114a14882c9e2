"""The peers `make bench` runs beside Tiger: optimum's
`ORTModelForCausalLM.generate` on the fp32 export and transformers' `generate`,
one request at a time. (llama.cpp's server takes its turn in Tiger's own rounds:
see `bench._network_levels`.)"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from ..models.store import ModelManifest
from .bench_stats import Level, Stream, messages


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
