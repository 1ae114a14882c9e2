"""Continuous batching over the fused graph, on the tiny random Llama."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch

from tests.helpers import PROMPT, Collector, graph, sequence
from tiger_grpc.api.errors import OverloadedError
from tiger_grpc.api.events import Stop, StopReason
from tiger_grpc.config import Device
from tiger_grpc.engine.fused import FusedCausalLM
from tiger_grpc.engine.scheduler import BatchScheduler

PROMPTS = [
    PROMPT,
    PROMPT[:4] + [77, 88, 99],
    [1, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16],
]


@pytest.fixture(scope="module")
def fused_path(store_home, tiny_model):
    return graph(store_home, tiny_model)


# fp16 is the CUDA graph (fp16 weights, activations and KV cache), run here by ORT's
# CPU kernels through the same device-buffer code.
@pytest.mark.parametrize(("precision", "atol"), [("fp32", 1e-4), ("fp16", 3e-3)])
def test_fused_graph_matches_pytorch_in_prefill_and_batched_decode(
    store_home, tiny_model, torch_model, precision, atol
):
    path = graph(store_home, tiny_model, precision)
    model = FusedCausalLM(path, Device.CPU, max_batch=3, max_len=64)
    assert model.dtype == {"fp32": np.float32, "fp16": np.float16}[precision]
    firsts = [model.prefill(slot, ids) for slot, ids in enumerate(PROMPTS)]
    nexts = [int(np.argmax(f)) for f in firsts]
    decoded = model.decode(nexts, [len(p) for p in PROMPTS])
    with torch.no_grad():
        for i, ids in enumerate(PROMPTS):
            logits = torch_model(torch.tensor([ids + [nexts[i]]])).logits[0].numpy()
            np.testing.assert_allclose(firsts[i], logits[-2], atol=atol)
            np.testing.assert_allclose(decoded[i], logits[-1], atol=atol)


def test_moving_a_slot_keeps_its_sequence(fused_path):
    model = FusedCausalLM(fused_path, Device.CPU, max_batch=2, max_len=64)
    model.prefill(1, PROMPTS[0])
    model.move(1, 0)
    moved = model.decode([42], [len(PROMPTS[0])])[0]
    fresh = FusedCausalLM(fused_path, Device.CPU, max_batch=1, max_len=64)
    fresh.prefill(0, PROMPTS[0])
    np.testing.assert_allclose(
        moved, fresh.decode([42], [len(PROMPTS[0])])[0], atol=1e-5
    )


def submit(scheduler, tokenizer, prompt, max_tokens):
    collector = Collector()
    seq = sequence(tokenizer, collector, max_tokens, temperature=0.0)
    seq.prompt_ids = list(prompt)
    scheduler.submit(seq)
    return seq, collector


def test_concurrent_greedy_matches_solo_runs(fused_path, tokenizer) -> None:
    scheduler = BatchScheduler(FusedCausalLM(fused_path, Device.CPU, 4, 256), "tiny")
    try:
        solo = []
        for prompt in PROMPTS:
            seq, done = submit(scheduler, tokenizer, prompt, 30)
            assert done.done.wait(30)
            solo.append(seq.generated)
        steps_before = scheduler.steps
        # Different lengths, joining at different times, finishing at different times.
        runs = [
            submit(scheduler, tokenizer, p, n)
            for p, n in zip(PROMPTS, (30, 10, 20), strict=True)
        ]
        for _, done in runs:
            assert done.done.wait(30)
        for (seq, done), expected, n in zip(runs, solo, (30, 10, 20), strict=True):
            assert seq.generated == expected[:n]
            stop = done.events[-1]
            assert isinstance(stop, Stop) and stop.stop_reason is StopReason.MAX_TOKENS
        # They shared decode steps: far fewer than the 57 a one-by-one run needs.
        assert scheduler.steps - steps_before < 57
        assert scheduler.running == 0
    finally:
        scheduler.close()


def test_a_late_arrival_joins_the_running_batch(fused_path, tokenizer) -> None:
    scheduler = BatchScheduler(FusedCausalLM(fused_path, Device.CPU, 4, 1024), "tiny")
    try:
        long_seq, long_done = submit(scheduler, tokenizer, PROMPTS[0], 800)
        while len(long_seq.generated) < 5:
            time.sleep(0.001)
        late, late_done = submit(scheduler, tokenizer, PROMPTS[1], 5)
        assert late_done.done.wait(30)
        assert not long_done.done.is_set()  # the late one did not wait for the long one
        scheduler.cancel(long_seq)
        assert scheduler.running <= 1
    finally:
        scheduler.close()


def test_admission_is_bounded(fused_path, tokenizer) -> None:
    scheduler = BatchScheduler(
        FusedCausalLM(fused_path, Device.CPU, 1, 1024), "tiny", max_queued=1
    )
    try:
        first, _ = submit(scheduler, tokenizer, PROMPTS[0], 900)
        second, _ = submit(scheduler, tokenizer, PROMPTS[1], 900)
        with pytest.raises(OverloadedError, match="at capacity"):
            submit(scheduler, tokenizer, PROMPTS[2], 5)
        scheduler.cancel(first)
        scheduler.cancel(second)
    finally:
        scheduler.close()


def test_a_prompt_written_in_chunks_and_moved_half_way_matches_pytorch(
    fused_path, torch_model
) -> None:
    model = FusedCausalLM(fused_path, Device.CPU, max_batch=3, max_len=1024)
    ids = [int(t) for t in np.random.default_rng(1).integers(3, 400, 300)]
    with torch.no_grad():
        expected = torch_model(torch.tensor([ids])).logits[0].numpy()
    np.testing.assert_allclose(model.prefill(2, ids[:128]), expected[127], atol=1e-4)
    model.move(2, 1)  # a running sequence left: the prompt moves down a slot
    np.testing.assert_allclose(
        model.prefill(1, ids[:256], 128), expected[255], atol=1e-4
    )
    np.testing.assert_allclose(model.prefill(1, ids, 256), expected[299], atol=1e-4)


class Greedy:
    """A sampler that keeps every distribution it was given."""

    def __init__(self) -> None:
        self.seen: list[np.ndarray] = []

    def __call__(self, logits: np.ndarray) -> int:
        self.seen.append(np.array(logits))
        return int(np.argmax(logits))


def test_a_long_prompt_is_written_between_decode_steps(fused_path, tokenizer) -> None:
    """A, C running while B's 700-token prompt goes in 32 tokens a turn: A finishes
    half-way (C and B's partial prompt move down a slot), and every output equals
    its solo run with the prompt written at once."""
    long = [int(t) for t in np.random.default_rng(2).integers(3, 400, 700)]
    plan = [(PROMPTS[1], 4), (PROMPTS[2], 30), (long, 12)]

    def run_all(chunk: int, together: bool) -> tuple[list, BatchScheduler]:
        scheduler = BatchScheduler(
            FusedCausalLM(fused_path, Device.CPU, 3, 1024), "tiny", prefill_chunk=chunk
        )

        class Watch(Collector):  # notes how many chunks were written at its stop
            def __call__(self, event) -> None:
                if isinstance(event, Stop):
                    self.chunks_at_stop = scheduler.prefill_chunks
                super().__call__(event)

        try:
            runs = []
            for prompt, n in plan:
                watch = Watch()
                seq = sequence(tokenizer, watch, n, temperature=0.0)
                seq.prompt_ids = list(prompt)
                seq.sampler = Greedy()
                scheduler.submit(seq)
                runs.append((seq, watch))
                if not together:
                    assert watch.done.wait(60)
            for _, watch in runs:
                assert watch.done.wait(60)
            return runs, scheduler
        finally:
            scheduler.close()

    solo, _ = run_all(10**6, together=False)
    chunked, scheduler = run_all(32, together=True)
    assert [s.generated for s, _ in chunked] == [s.generated for s, _ in solo]
    for (a, _), (b, _) in zip(chunked, solo, strict=True):
        np.testing.assert_allclose(a.sampler.seen, b.sampler.seen, atol=1e-4)
    assert scheduler.prefill_chunks == 1 + 1 + 22  # ceil(700 / 32) for B
    # A finished while B's prompt was still going in.
    assert chunked[0][1].chunks_at_stop < 1 + 1 + 22
