"""Prefix caching, proven against the same requests with the cache off: the tiny
random Llama's fused graphs (fp32, fp16 as on CUDA, and int4 as on CPU by default)
under the real scheduler. Greedy tokens must be equal, and log-probabilities equal
within float rounding (on int4 a one-row matmul, which the cache must never cause,
is off by up to 0.5), whether the hit ends inside
a cached prompt, covers a whole cached conversation, comes from a running
sequence, or survives the cache shrinking when idle."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from tests.helpers import Collector, graph
from tiger_grpc.api.events import Delta, Stop
from tiger_grpc.api.params import GenerateParams
from tiger_grpc.config import Device
from tiger_grpc.engine.fused import INITIAL_CAPACITY, FusedCausalLM
from tiger_grpc.engine.request import new_sequences
from tiger_grpc.engine.scheduler import BatchScheduler
from tiger_grpc.engine.tokens import TokenTexts
from tiger_grpc.models.pipeline import build_graph
from tiger_grpc.models.store import ModelStore

RNG = np.random.default_rng(7)
ATOL = {"fp32": 1e-4, "fp16": 2e-2, "int4": 1e-5}


def tokens(count: int) -> list[int]:
    return [int(t) for t in RNG.integers(100, 40000, count)]


class Answer:
    """A finished request: its generated ids, their log-probabilities, usage."""

    def __init__(self, sequence, collector: Collector) -> None:
        self.ids = list(sequence.generated)
        self.logprobs = [
            t.logprob
            for e in collector.events
            if isinstance(e, Delta)
            for t in e.logprobs
        ]
        (self.stop,) = [e for e in collector.events if isinstance(e, Stop)]
        self.cached = self.stop.usage.cached_tokens


def submit(scheduler, tokenizer, texts, prompt, max_tokens=8, salt="", n=1):
    """Submits a greedy request; returns its sequences and collectors."""
    params = GenerateParams(
        model="tiny",
        prompt="x",
        temperature=0.0,
        logprobs=True,
        max_tokens=max_tokens,
        cache_salt=salt,
        n=n,
    )
    sequences = new_sequences(
        params,
        list(prompt),
        tokenizer=tokenizer,
        eos_token_ids=[],
        room=4000,
        default_max_tokens=8,
        texts=texts,
    )
    collectors = []
    for s in sequences:
        s.emit = Collector()
        collectors.append(s.emit)
    scheduler.submit(*sequences)
    return sequences, collectors


def run(scheduler, tokenizer, texts, prompt, **fields) -> list[Answer]:
    sequences, collectors = submit(scheduler, tokenizer, texts, prompt, **fields)
    assert all(c.done.wait(60) for c in collectors)
    return [Answer(s, c) for s, c in zip(sequences, collectors, strict=True)]


@pytest.fixture(scope="module")
def texts(tokenizer):
    return TokenTexts(tokenizer)


@pytest.fixture(scope="module")
def int4_graph(store_home, tiny_model, tmp_path_factory):
    out = tmp_path_factory.mktemp("int4")
    build_graph(ModelStore(store_home).path(tiny_model.id) / "hf", out, "int4")
    return out / "model.onnx"


@pytest.fixture(scope="module", params=["fp32", "fp16", "int4"])
def pair(request, store_home, tiny_model):
    """A scheduler with the prefix cache, and one without, on the same graph."""
    if request.param == "int4":
        path = request.getfixturevalue("int4_graph")
    else:
        path = graph(store_home, tiny_model, request.param)
    made = [
        BatchScheduler(
            FusedCausalLM(path, Device.CPU, 3, 2048), "tiny", prefix_cache=cache
        )
        for cache in (True, False)
    ]
    yield (*made, ATOL[request.param])
    for scheduler in made:
        scheduler.close()


def same(hit: Answer, reference: Answer, atol: float) -> None:
    assert hit.ids == reference.ids
    np.testing.assert_allclose(hit.logprobs, reference.logprobs, rtol=0, atol=atol)


def test_a_hit_that_ends_inside_a_cached_prompt(pair, tokenizer, texts):
    cached, plain, atol = pair
    first = tokens(300)  # longer than a prefill chunk
    run(cached, tokenizer, texts, first)
    second = first[:170] + tokens(40)
    (hit,) = run(cached, tokenizer, texts, second)
    (reference,) = run(plain, tokenizer, texts, second)
    assert hit.cached == 170 and reference.cached == 0
    same(hit, reference, atol)


def test_a_chat_turn_reuses_the_previous_prompt(pair, tokenizer, texts):
    """The next turn's prompt holds the previous prompt and answer: the prompt
    comes from the cache, the answer is written again (decode steps computed its
    KV along another path than a prefill does)."""
    cached, plain, atol = pair
    prompt = tokens(120)
    (turn,) = run(cached, tokenizer, texts, prompt, max_tokens=12)
    following = prompt + turn.ids + tokens(15)
    (hit,) = run(cached, tokenizer, texts, following, max_tokens=12)
    (reference,) = run(plain, tokenizer, texts, following, max_tokens=12)
    assert hit.cached == len(prompt)
    same(hit, reference, atol)
    # The same prompt again: all of it but its last two tokens.
    (again,) = run(cached, tokenizer, texts, following, max_tokens=12)
    assert again.cached == len(following) - 2
    same(again, reference, atol)


@pytest.mark.parametrize("hit, rest", [(100, 157), (100, 257), (0, 257)])
def test_the_answer_does_not_depend_on_where_the_chunks_fall(
    pair, tokenizer, texts, hit, rest
):
    """Prompts written in 256-token chunks from where the hit ends: a single
    token left for the last chunk would take int4's one-row matmul path."""
    cached, plain, atol = pair
    base = tokens(300)
    run(cached, tokenizer, texts, base)
    prompt = base[:hit] + tokens(rest)
    (answer,) = run(cached, tokenizer, texts, prompt)
    (reference,) = run(plain, tokenizer, texts, prompt)
    assert answer.cached == hit
    same(answer, reference, atol)


def test_kept_prefixes_survive_the_cache_growing(pair, tokenizer, texts):
    """Growth copies only the positions each row uses: a prefix kept before a
    long prompt grew the cache still serves, exactly."""
    cached, plain, atol = pair
    kept = tokens(200)
    run(cached, tokenizer, texts, kept)
    before = cached.model.capacity
    run(cached, tokenizer, texts, tokens(before + 50))
    assert cached.model.capacity > before
    question = kept + tokens(20)
    (hit,) = run(cached, tokenizer, texts, question)
    (reference,) = run(plain, tokenizer, texts, question)
    assert hit.cached == len(kept)
    same(hit, reference, atol)


def test_salts_keep_requests_apart(pair, tokenizer, texts):
    cached, _, _ = pair
    prompt = tokens(80)
    run(cached, tokenizer, texts, prompt, salt="tenant-a")
    (other,) = run(cached, tokenizer, texts, prompt, salt="tenant-b")
    (same_salt,) = run(cached, tokenizer, texts, prompt, salt="tenant-a")
    assert other.cached == 0 and same_salt.cached == len(prompt) - 2


def test_a_running_sequence_and_sibling_choices_share_their_prefix(
    pair, tokenizer, texts
):
    cached, plain, atol = pair
    system = tokens(200)
    long_seqs, long_out = submit(cached, tokenizer, texts, system + tokens(5), 300)
    while not long_seqs[0].generated:
        long_out[0].done.wait(0.001)
    question = system + tokens(20)
    choices = run(cached, tokenizer, texts, question, n=2)
    (reference,) = run(plain, tokenizer, texts, question)
    assert choices[0].cached == 200  # from the running sequence's row
    assert not long_out[0].done.is_set()
    for choice in choices:  # the second choice reuses the first's whole prompt
        same(choice, reference, atol)
    assert long_out[0].done.wait(60)


def test_kept_rows_never_keep_a_request_out(pair, tokenizer, texts):
    """Three rows, every one of them keeping a prefix: new requests still get a
    row at once (the least recently used entry goes), several at a time too."""
    cached, _, _ = pair
    for _ in range(4):
        run(cached, tokenizer, texts, tokens(60))
    assert cached.cache_stats().rows >= 2
    results: list[list[Answer]] = []
    threads = [
        threading.Thread(
            target=lambda: results.append(run(cached, tokenizer, texts, tokens(50)))
        )
        for _ in range(3)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert len(results) == 3 and all(
        r[0].stop.usage.output_tokens == 8 for r in results
    )
    stats = cached.cache_stats()
    assert stats.rows <= 3 and stats.hits <= stats.lookups


def test_idle_the_cache_shrinks_to_what_kept_rows_need(pair, tokenizer, texts):
    cached, plain, atol = pair
    prompt = tokens(INITIAL_CAPACITY + 300)
    run(cached, tokenizer, texts, prompt)
    assert cached.model.capacity == 2 * INITIAL_CAPACITY  # the long entry needs it
    question = prompt + tokens(10)
    (hit,) = run(cached, tokenizer, texts, question)
    (reference,) = run(plain, tokenizer, texts, question)
    assert hit.cached == len(prompt)
    same(hit, reference, atol)
    shorts = [tokens(30) for _ in range(4)]
    for short in shorts:  # the long entries go, least recently used first
        run(cached, tokenizer, texts, short)
    assert cached.model.capacity == INITIAL_CAPACITY
    # An entry copied into the shorter cache still serves (from another row).
    again = shorts[1] + tokens(3)
    (hit,) = run(cached, tokenizer, texts, again)
    (reference,) = run(plain, tokenizer, texts, again)
    assert hit.cached >= len(shorts[1])
    same(hit, reference, atol)


def test_a_row_keeps_its_contents_when_the_cache_is_cut(store_home, tiny_model):
    path = graph(store_home, tiny_model)
    model = FusedCausalLM(path, Device.CPU, 2, 4096)
    long, kept = tokens(1100), tokens(600)
    model.prefill(0, long)
    model.prefill(1, kept)
    assert model.capacity == len(long)
    model.shrink({1: len(kept)})
    assert model.capacity == 1024
    after = model.prefill(1, [*kept, 42], len(kept))
    fresh = FusedCausalLM(path, Device.CPU, 1, 4096)
    np.testing.assert_allclose(after, fresh.prefill(0, [*kept, 42]), atol=1e-4)


def test_a_part_of_a_row_is_copied_head_by_head(store_home, tiny_model):
    path = graph(store_home, tiny_model)
    model = FusedCausalLM(path, Device.CPU, 2, 1024)
    shared, rest = tokens(60), tokens(25)
    model.prefill(0, shared + tokens(40))
    model.move(0, 1, len(shared))
    after = model.prefill(1, shared + rest, len(shared))
    fresh = FusedCausalLM(path, Device.CPU, 1, 1024)
    np.testing.assert_allclose(after, fresh.prefill(0, shared + rest), atol=1e-4)
