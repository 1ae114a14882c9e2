"""The gRPC server's Prometheus metrics (served on its own port by `server`); the
gauges of running and queued sequences are read from the registry at scrape time
(`server.observe`)."""

from __future__ import annotations

import contextvars
from collections.abc import Callable
from dataclasses import dataclass

from prometheus_client import Counter, Gauge, Histogram


@dataclass
class Meter:
    """The tokens (prompt + generated) one call has used, for its key's limits:
    the auth layer makes one per call, the registry points `live` at the call's
    sequences, so the count is right whenever and however the call ends."""

    live: Callable[[], int] | None = None

    def used(self) -> int:
        return self.live() if self.live is not None else 0


TOKENS_USED: contextvars.ContextVar[Meter | None] = contextvars.ContextVar(
    "tokens_used", default=None
)

REQUESTS = Counter(
    "tiger_requests",
    "gRPC requests by method, model and status code",
    ["method", "model", "code"],
)
KEY_REQUESTS = Counter(
    "tiger_key_requests",
    "gRPC requests by API key name (never the key), method and outcome",
    ["key", "method", "code"],
)
KEY_TOKENS = Counter(
    "tiger_key_tokens", "Prompt and generated tokens by API key name", ["key"]
)
TIME_TO_FIRST_TOKEN = Histogram(
    "tiger_time_to_first_token_seconds",
    "Time from request to first token",
    ["model"],
    buckets=(0.01, 0.025, 0.05, 0.1, 0.2, 0.4, 0.8, 1.6, 3.2, 6.4, 12.8),
)
INTER_TOKEN_LATENCY = Histogram(
    "tiger_inter_token_latency_seconds",
    "Time between streamed chunks of one sequence",
    ["model"],
    buckets=(0.002, 0.004, 0.008, 0.016, 0.032, 0.064, 0.128, 0.256, 0.512, 1.0),
)
PROMPT_TOKENS = Counter("tiger_prompt_tokens", "Prompt tokens processed", ["model"])
GENERATED_TOKENS = Counter("tiger_generated_tokens", "Tokens generated", ["model"])
MODEL_LOADS = Counter("tiger_model_loads", "Models loaded into memory", ["model"])
MODEL_LOAD_SECONDS = Histogram(
    "tiger_model_load_seconds",
    "Time to load a model",
    ["model"],
    buckets=(0.5, 1, 2, 4, 8, 16, 32, 64),
)
TRAININGS_RUNNING = Gauge("tiger_trainings_running", "Trainings in progress")
TRAIN_STEPS = Counter("tiger_train_steps", "Optimizer steps taken by trainings")
