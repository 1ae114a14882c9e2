"""The engine's gauges (running and queued sequences per loaded model), read from
the registry at scrape time."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from prometheus_client.core import REGISTRY, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector


class EngineCollector(Collector):
    def __init__(self, registry: Any) -> None:
        self._registry = registry

    def collect(self) -> Iterator[Metric]:
        running = GaugeMetricFamily(
            "tiger_running_sequences", "Sequences being decoded", labels=["model"]
        )
        queued = GaugeMetricFamily(
            "tiger_queued_sequences", "Sequences waiting for a slot", labels=["model"]
        )
        for model in self._registry.models():
            if model.loaded:
                running.add_metric([model.id], model.running)
                queued.add_metric([model.id], model.queued)
        yield running
        yield queued


def register_engine(registry: Any) -> EngineCollector:
    collector = EngineCollector(registry)
    REGISTRY.register(collector)
    return collector
