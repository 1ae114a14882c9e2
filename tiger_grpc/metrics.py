"""Prometheus metrics of the gRPC server, served on its own HTTP port."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client import Counter, Gauge, Histogram
from prometheus_client.core import REGISTRY, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from .models import ModelRegistry

REQUESTS = Counter(
    "tiger_requests",
    "gRPC requests by method, model and status code",
    ["method", "model", "code"],
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


class EngineCollector(Collector):
    """Running and queued sequences per loaded model, read at scrape time."""

    def __init__(self, registry: ModelRegistry) -> None:
        self._registry = registry

    def collect(self) -> Iterator[Metric]:
        running = GaugeMetricFamily(
            "tiger_running_sequences", "Sequences being decoded", labels=["model"]
        )
        queued = GaugeMetricFamily(
            "tiger_queued_sequences", "Sequences waiting for a slot", labels=["model"]
        )
        for status in self._registry.statuses():
            if status.loaded:
                running.add_metric([status.manifest.id], status.running)
                queued.add_metric([status.manifest.id], status.queued)
        yield running
        yield queued


def register_engine(registry: ModelRegistry) -> EngineCollector:
    collector = EngineCollector(registry)
    REGISTRY.register(collector)
    return collector
