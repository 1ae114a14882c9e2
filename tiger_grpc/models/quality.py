"""A graph's quality against the fp32 reference, as the field measures it.

On a fixed held-out English text (`heldout.txt`, about 2,200 tokens, written for
this purpose and never used to build or tune anything), each graph predicts every
next token with the true text before it (teacher forcing). Against the fp32
optimum export of the same weights: top-1 agreement (how often both put the same
token first), the mean KL divergence KL(reference || graph) of the next-token
distributions, and the ratio of the perplexities on the text itself.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

HELD_OUT = Path(__file__).with_name("heldout.txt")


@dataclass(frozen=True)
class Quality:
    tokens: int  # positions compared
    top1: float  # share of positions where both rank the same token first
    kl: float  # mean KL(reference || graph), nats per token
    perplexity: float
    reference_perplexity: float

    @property
    def perplexity_ratio(self) -> float:
        return self.perplexity / self.reference_perplexity


def held_out_ids(tokenizer: Any, limit: int | None = None) -> list[int]:
    """The held-out text's token ids (the first `limit` of them)."""
    ids = [int(i) for i in tokenizer.encode(HELD_OUT.read_text())]
    return ids[:limit] if limit else ids


def log_softmax(logits: np.ndarray) -> np.ndarray:
    logits = logits.astype(np.float64)
    shifted = logits - logits.max(-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))


def compare(reference: np.ndarray, logits: np.ndarray, ids: list[int]) -> Quality:
    """`reference` and `logits`: (positions, vocab), row i predicting ids[i + 1]."""
    ref, got = log_softmax(reference), log_softmax(logits)
    targets = np.asarray(ids[1 : len(ref) + 1])
    rows = np.arange(len(targets))
    kl = (np.exp(ref) * (ref - got)).sum(-1)
    return Quality(
        tokens=len(targets),
        top1=float((ref.argmax(-1) == got.argmax(-1)).mean()),
        kl=float(kl.mean()),
        perplexity=float(np.exp(-got[rows, targets].mean())),
        reference_perplexity=float(np.exp(-ref[rows, targets].mean())),
    )


def fused_logits(model: Any, ids: list[int]) -> np.ndarray:
    """Teacher-forced logits of a `FusedCausalLM` (one slot): every position's,
    the last token's excepted."""
    rows = [np.array(model.prefill(0, ids[:1]))]
    for i, token in enumerate(ids[1:-1], start=1):
        rows.append(np.array(model.decode([token], [i])[0]))
    return np.stack(rows).reshape(len(ids) - 1, -1)


def reference_logits(model: Any, ids: list[int], chunk: int = 256) -> np.ndarray:
    """The same from the fp32 optimum export (an `OnnxCausalLM`), a chunk of
    positions per run."""
    cache, rows = model.empty_cache(), []
    for start in range(0, len(ids) - 1, chunk):
        part = ids[start : min(start + chunk, len(ids) - 1)]
        logits, cache = model.forward(part, cache, every_position=True)
        rows.append(logits)
    return np.concatenate(rows)
