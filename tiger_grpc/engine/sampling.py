"""Choosing the next token from logits (greedy, temperature, top-k, top-p, OpenAI's
frequency and presence penalties), and the log-probabilities of tokens."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class SamplingParams:
    temperature: float = 1.0  # 0 is greedy
    top_p: float = 1.0
    top_k: int = 0  # 0 is off
    seed: int | None = None
    frequency_penalty: float = 0.0
    presence_penalty: float = 0.0

    @classmethod
    def of(
        cls, params: Any, choice: int = 0, defaults: Mapping[str, float] | None = None
    ) -> SamplingParams:
        """The sampling fields of a request's params, for its choice `choice`
        (which samples with seed + choice); those it leaves unset (None) are the
        model's `defaults`, else the usual 1.0, 1.0 and 0 (off)."""
        seed = params.seed
        given = defaults or {}

        def pick(name: str, usual: float) -> Any:
            value = getattr(params, name)
            return given.get(name, usual) if value is None else value

        return cls(
            float(pick("temperature", 1.0)),
            float(pick("top_p", 1.0)),
            int(pick("top_k", 0)),
            None if seed is None else (seed + choice) % 2**64,
            getattr(params, "frequency_penalty", 0.0),
            getattr(params, "presence_penalty", 0.0),
        )


class Sampler:
    """Samples token ids for one sequence; seeded, so reruns repeat exactly."""

    def __init__(self, params: SamplingParams) -> None:
        self.params = params
        self._rng = np.random.default_rng(params.seed)
        self._penalized = bool(params.frequency_penalty or params.presence_penalty)
        self._counts: dict[int, int] = {}  # tokens chosen so far (for the penalties)

    @property
    def plain_greedy(self) -> bool:
        """The most likely token, as the logits give it (no penalties)."""
        return self.params.temperature == 0.0 and not self._penalized

    def __call__(self, logits: np.ndarray) -> int:
        if self._penalized:
            logits = self._penalize(logits)
            token = self._choose(logits)
            self._counts[token] = self._counts.get(token, 0) + 1
            return token
        return self._choose(logits)

    def _penalize(self, logits: np.ndarray) -> np.ndarray:
        """OpenAI's penalties: minus frequency_penalty times a token's count so far,
        minus presence_penalty once it has appeared."""
        if not self._counts:
            return logits
        p = self.params
        ids = np.fromiter(self._counts, dtype=np.int64, count=len(self._counts))
        counts = np.fromiter(self._counts.values(), np.float32, len(self._counts))
        out = logits.astype(np.float32, copy=True)
        out[ids] -= counts * p.frequency_penalty + p.presence_penalty
        return out

    def _choose(self, logits: np.ndarray) -> int:
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


def log_softmax_at(logits: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """The natural-log probabilities of `ids` under `logits` (the model's own
    distribution: before temperature, top-k/top-p and penalties, as vLLM reports)."""
    top = float(logits.max())
    normalizer = top + float(np.log(np.exp(logits.astype(np.float64) - top).sum()))
    return logits[ids].astype(np.float64) - normalizer


def token_logprob(
    logits: np.ndarray, token: int, top: int
) -> tuple[float, list[tuple[int, float]]]:
    """`token`'s log-probability, and the `top` most likely tokens' (most likely
    first)."""
    best = np.argpartition(-logits, top)[:top] if top else np.empty(0, np.int64)
    best = best[np.argsort(-logits[best], kind="stable")]
    values = log_softmax_at(logits, np.concatenate([[token], best]).astype(np.int64))
    return float(values[0]), [
        (int(i), float(v)) for i, v in zip(best, values[1:], strict=True)
    ]
