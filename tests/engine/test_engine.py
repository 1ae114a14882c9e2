"""The decode loop on a tiny random-weight Llama exported by optimum."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch

from tests.helpers import PROMPT, Collector, sequence
from tiger_grpc.api.events import Failure, Stop, StopReason
from tiger_grpc.config import Device
from tiger_grpc.engine.optimum import OnnxCausalLM
from tiger_grpc.engine.providers import CPU
from tiger_grpc.engine.sequence import Sequence
from tiger_grpc.engine.serial import SerialScheduler
from tiger_grpc.models.store import ModelStore


@pytest.fixture(scope="module")
def tiny(store_home, tiny_model):
    directory = ModelStore(store_home).path(tiny_model.id)
    return directory, OnnxCausalLM(directory / tiny_model.onnx_path, Device.CPU)


def test_cpu_provider_is_reported(tiny) -> None:
    _, model = tiny
    assert model.provider == CPU


def test_kv_cache_steps_match_one_full_pass_and_pytorch(tiny) -> None:
    directory, model = tiny
    ids = PROMPT + [42, 7, 1000]
    cache = model.empty_cache()
    stepwise = []
    logits, cache = model.forward(PROMPT, cache)
    stepwise.append(logits)
    for token in ids[len(PROMPT) :]:
        logits, cache = model.forward([token], cache)
        stepwise.append(logits)
    assert cache.length == len(ids)
    full, _ = model.forward(ids, model.empty_cache())
    np.testing.assert_allclose(stepwise[-1], full, atol=1e-4)

    from transformers import LlamaForCausalLM

    torch_model = LlamaForCausalLM.from_pretrained(directory / "hf").eval()
    with torch.no_grad():
        reference = torch_model(torch.tensor([ids])).logits[0, -1].numpy()
    np.testing.assert_allclose(full, reference, atol=1e-4)


def run(scheduler: SerialScheduler, tokenizer, max_tokens: int, **sampling) -> Sequence:
    collector = Collector()
    seq = sequence(tokenizer, collector, max_tokens, **sampling)
    scheduler.submit(seq)
    assert collector.done.wait(60)
    return seq


def test_greedy_runs_to_max_tokens_and_repeats(tiny, tokenizer) -> None:
    _, model = tiny
    scheduler = SerialScheduler(model, "tiny")
    try:
        first = run(scheduler, tokenizer, 12, temperature=0.0)
        second = run(scheduler, tokenizer, 12, temperature=0.0)
        assert len(first.generated) == 12
        assert first.generated == second.generated
        assert first.usage().input_tokens == len(PROMPT)
        assert first.usage().output_tokens == 12
    finally:
        scheduler.close()


def test_seeded_sampling_repeats_and_seeds_differ(tiny, tokenizer) -> None:
    _, model = tiny
    scheduler = SerialScheduler(model, "tiny")
    try:
        a = run(scheduler, tokenizer, 16, seed=1).generated
        assert a == run(scheduler, tokenizer, 16, seed=1).generated
        assert a != run(scheduler, tokenizer, 16, seed=2).generated
    finally:
        scheduler.close()


def test_interleaved_sequences_match_solo_runs_and_cancel_frees(
    tiny, tokenizer
) -> None:
    _, model = tiny
    scheduler = SerialScheduler(model, "tiny")
    try:
        solo = run(scheduler, tokenizer, 20, temperature=0.0).generated
        long_collector, a_collector = Collector(), Collector()
        long_seq = sequence(tokenizer, long_collector, 200, temperature=0.0)
        a = sequence(tokenizer, a_collector, 20, temperature=0.0)
        scheduler.submit(long_seq)
        scheduler.submit(a)
        assert a_collector.done.wait(60)
        assert a.generated == solo
        assert scheduler.running == 1  # the long one is still going
        scheduler.cancel(long_seq)
        deadline = threading.Event()
        for _ in range(100):
            if scheduler.running == 0:
                break
            deadline.wait(0.05)
        assert scheduler.running == 0
        assert (
            not long_collector.done.is_set()
        )  # cancelled: no stop chunk owed to anyone
        stops = [e for e in a_collector.events if isinstance(e, Stop)]
        assert len(stops) == 1 and stops[0].stop_reason is StopReason.MAX_TOKENS
    finally:
        scheduler.close()


class ExplodingModel:
    """A model whose forward pass fails for one prompt: an engine bug, simulated."""

    def __init__(self, real: OnnxCausalLM, poison: int) -> None:
        self.real, self.poison = real, poison

    def empty_cache(self):
        return self.real.empty_cache()

    def forward(self, token_ids, cache, every_position=False):
        if token_ids and token_ids[0] == self.poison:
            raise RuntimeError("boom")
        return self.real.forward(token_ids, cache, every_position)


def test_an_engine_exception_ends_that_stream_with_one_error(tiny, tokenizer) -> None:
    _, model = tiny
    scheduler = SerialScheduler(ExplodingModel(model, poison=999), "tiny")  # type: ignore[arg-type]
    try:
        bad_collector = Collector()
        bad = sequence(tokenizer, bad_collector, 5, temperature=0.0)
        bad.prompt_ids = [999, *PROMPT]
        scheduler.submit(bad)
        assert bad_collector.done.wait(30)
        assert [type(e) for e in bad_collector.events] == [Failure]
        assert "boom" not in bad_collector.events[0].message  # no internals leak
        good = run(scheduler, tokenizer, 5, temperature=0.0)  # the loop lives on
        assert len(good.generated) == 5
    finally:
        scheduler.close()
