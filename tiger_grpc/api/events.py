"""What streams and calls return, free of any protocol: the engine emits these, the
servicer converts them to protobuf, and the Python client returns them as they are."""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field

from .errors import Status


class StopReason(enum.StrEnum):
    """Why a generation ended; compares equal to its name in the HTTP API."""

    END_TURN = "end_turn"
    MAX_TOKENS = "max_tokens"
    STOP_SEQUENCE = "stop_sequence"


@dataclass(frozen=True)
class Usage:
    duration_ms: int
    input_tokens: int
    output_tokens: int
    cached_tokens: int = 0  # of the input tokens, those the prefix cache held


@dataclass(frozen=True)
class TopLogprob:
    token_id: int
    token: str  # the token's text (U+FFFD where it holds part of a character)
    bytes: bytes  # exact
    logprob: float


@dataclass(frozen=True)
class TokenLogprob:
    """A token's natural-log probability under the model, and the most likely
    alternatives at its position (most likely first)."""

    token_id: int
    token: str
    bytes: bytes
    logprob: float | None  # None for the first prompt token: nothing predicts it
    top: tuple[TopLogprob, ...] = ()


@dataclass(frozen=True)
class Info:
    message: str


@dataclass(frozen=True)
class Delta:
    text: str
    index: int = 0  # the choice (0 to n - 1)
    logprobs: tuple[TokenLogprob, ...] = ()  # the tokens the text came from


@dataclass(frozen=True)
class Stop:
    stop_reason: StopReason
    usage: Usage
    index: int = 0


@dataclass(frozen=True)
class PromptLogprobs:
    """The prompt's tokens and their log-probabilities (before any delta)."""

    tokens: tuple[TokenLogprob, ...]


@dataclass(frozen=True)
class Failure:
    """Generation failed after it started; `message` is safe to show the caller,
    `status` says what kind of failure it was."""

    message: str
    status: Status = Status.INTERNAL


Event = Info | PromptLogprobs | Delta | Stop | Failure


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


COMPLETED = "completed"  # the stop reason of a training or an import


@dataclass(frozen=True)
class Trained:
    model: str
    duration_ms: int
    train_tokens: int
    steps: int


TrainEvent = Info | Progress | Trained


@dataclass(frozen=True)
class Imported:
    model: str
    duration_ms: int


ImportEvent = Info | Imported


# What a listing says of each model (the protobuf `ModelInfo` and the JSON entry).
MODEL_FIELDS = (
    "id",
    "loaded",
    "provider",
    "context_length",
    "source",
    "running",
    "tokens_generated",
    "created",
    "precision",
    "quantization",
)


@dataclass(frozen=True)
class Model:
    """A stored model as `ListModels` reports it (`queued` stays in the server)."""

    id: str
    loaded: bool
    provider: str
    context_length: int
    source: str = ""
    running: int = 0
    queued: int = 0
    tokens_generated: int = 0
    created: int = 0  # when it entered the store (Unix seconds)
    # The graph that serves it (or will, once loaded): its precision (int4, fp16,
    # ...) and how its weights were quantized (the manifest's record).
    precision: str = ""
    quantization: str = ""
    # Sampling for requests that leave it unset: temperature, top_p, top_k.
    sampling: Mapping[str, float] = field(default_factory=dict)
