"""The engine's events: what a generation stream is made of, free of any protocol."""

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
