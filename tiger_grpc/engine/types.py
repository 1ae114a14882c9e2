"""The events that generation and training streams are made of, free of any protocol.

The Python client returns the same types (it imports nothing else of the engine).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


class StopReason(enum.Enum):
    END_TURN = "end_turn"
    MAX_TOKENS = "max_tokens"
    STOP_SEQUENCE = "stop_sequence"


@dataclass(frozen=True)
class Usage:
    duration_ms: int
    input_tokens: int
    output_tokens: int


@dataclass(frozen=True)
class Info:
    message: str


@dataclass(frozen=True)
class Delta:
    text: str


@dataclass(frozen=True)
class Stop:
    reason: StopReason
    usage: Usage


@dataclass(frozen=True)
class Failure:
    """Generation failed after it started; `message` is safe to show the caller."""

    message: str


Event = Info | Delta | Stop | Failure


@dataclass(frozen=True)
class Progress:
    step: int
    total_steps: int
    epoch: float
    loss: float
    learning_rate: float
    grad_norm: float
    tokens_per_second: float
    elapsed_ms: int
    eta_ms: int


@dataclass(frozen=True)
class Trained:
    model: str
    duration_ms: int
    train_tokens: int
    steps: int


@dataclass(frozen=True)
class Imported:
    model: str
    duration_ms: int
