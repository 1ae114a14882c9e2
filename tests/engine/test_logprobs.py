"""Log-probabilities, prompt scoring, penalties and several choices, on the tiny
random Llama, against PyTorch: both schedulers, the same graph that generates."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.helpers import PROMPT, Collector, graph
from tiger_grpc.api.errors import InvalidArgumentError
from tiger_grpc.api.events import Delta, PromptLogprobs, Stop, StopReason
from tiger_grpc.api.params import GenerateParams
from tiger_grpc.config import Device
from tiger_grpc.engine.fused import FusedCausalLM
from tiger_grpc.engine.optimum import OnnxCausalLM
from tiger_grpc.engine.request import new_sequences
from tiger_grpc.engine.scheduler import BatchScheduler
from tiger_grpc.engine.serial import SerialScheduler
from tiger_grpc.engine.tokens import TokenTexts
from tiger_grpc.models.store import ModelStore


@pytest.fixture(scope="module", params=["batch", "serial"])
def scheduler(request, store_home, tiny_model):
    if request.param == "batch":
        runner = FusedCausalLM(graph(store_home, tiny_model), Device.CPU, 4, 512)
        made = BatchScheduler(runner, "tiny")
    else:
        path = ModelStore(store_home).path(tiny_model.id) / tiny_model.onnx_path
        made = SerialScheduler(OnnxCausalLM(path, Device.CPU), "tiny")
    yield made
    made.close()


def choices(tokenizer, room: int = 400, **fields):
    """The engine sequences of a request for `PROMPT` (one per choice)."""
    return new_sequences(
        GenerateParams(model="tiny", prompt="x", **fields),
        list(PROMPT),
        tokenizer=tokenizer,
        eos_token_ids=[],
        room=room,
        default_max_tokens=8,
        texts=TokenTexts(tokenizer),
    )


def run(scheduler, tokenizer, **fields) -> list[Collector]:
    """Runs a request's choices to their end; one collector per choice."""
    sequences = choices(tokenizer, **fields)
    collectors = []
    for s in sequences:
        s.emit = Collector()
        collectors.append(s.emit)
    scheduler.submit(*sequences)
    assert all(c.done.wait(60) for c in collectors)
    return collectors


def reference(torch_model, ids: list[int]) -> np.ndarray:
    """PyTorch's log-probabilities at every position of `ids`."""
    with torch.no_grad():
        logits = torch_model(torch.tensor([ids])).logits[0].double()
    return torch.log_softmax(logits, -1).numpy()


def test_generated_tokens_carry_their_logprobs(scheduler, tokenizer, torch_model):
    (out,) = run(scheduler, tokenizer, temperature=0.0, logprobs=True, top_logprobs=3)
    tokens = [t for e in out.events if isinstance(e, Delta) for t in e.logprobs]
    ids = [t.token_id for t in tokens]
    assert len(ids) >= 6  # a token may stay held back at max_tokens
    expected = reference(torch_model, PROMPT + ids)
    for i, t in enumerate(tokens):
        row = expected[len(PROMPT) - 1 + i]
        assert t.logprob == pytest.approx(row[t.token_id], abs=2e-3)
        assert [a.token_id for a in t.top] == list(np.argsort(-row)[:3])
        assert t.top[0].token_id == t.token_id  # greedy takes the most likely
    joined = b"".join(t.bytes for t in tokens).decode("utf-8", "replace")
    assert joined.startswith(out.text)


def test_a_prompt_is_scored_token_by_token(scheduler, tokenizer, torch_model):
    (out,) = run(
        scheduler, tokenizer, max_tokens=0, prompt_logprobs=True, top_logprobs=2
    )
    (scores,) = [e for e in out.events if isinstance(e, PromptLogprobs)]
    stop = out.events[-1]
    assert isinstance(stop, Stop) and stop.stop_reason is StopReason.MAX_TOKENS
    assert stop.usage.output_tokens == 0
    assert [t.token_id for t in scores.tokens] == PROMPT
    assert scores.tokens[0].logprob is None
    expected = reference(torch_model, PROMPT)
    for i, t in enumerate(scores.tokens[1:]):
        assert t.logprob == pytest.approx(expected[i][PROMPT[i + 1]], abs=2e-3)
        assert len(t.top) == 2


def test_scoring_then_generating_gives_both(scheduler, tokenizer):
    (out,) = run(scheduler, tokenizer, temperature=0.0, prompt_logprobs=True)
    kinds = [type(e).__name__ for e in out.events]
    assert kinds[0] == "PromptLogprobs" and kinds[-1] == "Stop"
    assert out.events[-1].usage.output_tokens == 8


def test_choices_sample_apart_and_greedy_ones_agree(scheduler, tokenizer):
    seeded = run(scheduler, tokenizer, n=3, seed=7, temperature=1.0)
    assert [c.events[-1].index for c in seeded] == [0, 1, 2]
    assert len({c.text for c in seeded}) > 1
    again = run(scheduler, tokenizer, n=3, seed=7, temperature=1.0)
    assert [c.text for c in again] == [c.text for c in seeded]
    greedy = run(scheduler, tokenizer, n=2, temperature=0.0)
    assert greedy[0].text == greedy[1].text


def test_penalties_follow_openai(scheduler, tokenizer, torch_model):
    """Greedy with a frequency penalty equals PyTorch's greedy with the same
    penalty applied by hand."""
    (out,) = run(scheduler, tokenizer, temperature=0.0, frequency_penalty=1.5)
    ids: list[int] = []
    counts: dict[int, int] = {}
    with torch.no_grad():
        for _ in range(8):
            logits = torch_model(torch.tensor([PROMPT + ids])).logits[0, -1].numpy()
            for token, count in counts.items():
                logits[token] -= 1.5 * count
            ids.append(int(np.argmax(logits)))
            counts[ids[-1]] = counts.get(ids[-1], 0) + 1
    assert out.text == tokenizer.decode(ids, skip_special_tokens=True)


def test_a_prompt_is_scored_in_the_batch_beside_a_running_stream(
    store_home, tiny_model, tokenizer, torch_model
):
    """Scoring shares the running batch (teacher forcing, a token per step): it
    ends while a long stream goes on, with the same scores as scored alone; and a
    request of more choices than the server holds is refused as invalid."""
    runner = FusedCausalLM(graph(store_home, tiny_model), Device.CPU, 2, 1024)
    scheduler = BatchScheduler(runner, "tiny", max_queued=1)
    try:
        (long,) = choices(tokenizer, room=1000, max_tokens=900)
        long.emit = streaming = Collector()
        scheduler.submit(long)
        while not any(isinstance(e, Delta) for e in streaming.events):
            streaming.done.wait(0.001)
        test_a_prompt_is_scored_token_by_token(scheduler, tokenizer, torch_model)
        assert not streaming.done.is_set()
        scheduler.cancel(long)
        with pytest.raises(InvalidArgumentError, match="fewer choices"):
            run(scheduler, tokenizer, n=4)
    finally:
        scheduler.close()


def test_a_character_cut_off_at_the_end_keeps_its_logprobs(tokenizer):
    """Three lead bytes of a three-byte character, then max_tokens: no text comes
    out (a broken character is never sent), but each token's logprob does."""
    (s,) = choices(tokenizer, temperature=0.0, logprobs=True, max_tokens=3)
    lead = tokenizer.convert_tokens_to_ids("â")  # the byte 0xE2
    logits = np.zeros(len(tokenizer), np.float32)
    logits[lead] = 10.0
    events: list = []

    class Out:
        def put(self, sequence, event) -> None:
            events.append(event)

    for _ in range(3):
        s.step(logits, Out())
    deltas = [e for e in events if isinstance(e, Delta)]
    assert "".join(d.text for d in deltas) == ""
    assert [t.token_id for d in deltas for t in d.logprobs] == [lead] * 3
    (stop,) = [e for e in events if isinstance(e, Stop)]
    assert stop.stop_reason is StopReason.MAX_TOKENS and stop.usage.output_tokens == 3
