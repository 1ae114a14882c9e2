"""Choosing the next token from logits: greedy, temperature, top-k and top-p."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class SamplingParams:
    temperature: float = 1.0  # 0 is greedy
    top_p: float = 1.0
    top_k: int = 0  # 0 is off
    seed: int | None = None

    @classmethod
    def of(cls, params: Any) -> SamplingParams:
        """The sampling fields of a request's params."""
        return cls(params.temperature, params.top_p, params.top_k, params.seed)


class Sampler:
    """Samples token ids for one sequence; seeded, so reruns repeat exactly."""

    def __init__(self, params: SamplingParams) -> None:
        self.params = params
        self._rng = np.random.default_rng(params.seed)

    def __call__(self, logits: np.ndarray) -> int:
        p = self.params
        if p.temperature == 0.0:
            return int(np.argmax(logits))
        scaled = logits.astype(np.float64) / p.temperature
        if 0 < p.top_k < scaled.shape[-1]:
            kth = np.partition(scaled, -p.top_k)[-p.top_k]
            scaled = np.where(scaled < kth, -np.inf, scaled)
        scaled -= scaled.max()
        probs = np.exp(scaled)
        probs /= probs.sum()
        if p.top_p < 1.0:
            order = np.argsort(-probs, kind="stable")
            cumulative = np.cumsum(probs[order])
            # Keep the smallest prefix whose mass reaches top_p (at least one token).
            keep = int(np.searchsorted(cumulative, p.top_p)) + 1
            kept = order[:keep]
            mask = np.zeros_like(probs)
            mask[kept] = probs[kept]
            probs = mask / mask.sum()
        cdf = np.cumsum(probs)
        index = int(np.searchsorted(cdf, self._rng.random() * cdf[-1], side="right"))
        return min(index, probs.shape[-1] - 1)
