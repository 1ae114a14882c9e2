"""The engine's gauges (running and queued sequences per loaded model) and its
prefix caches' counters, read from the registry at scrape time."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from prometheus_client.core import (
    REGISTRY,
    CounterMetricFamily,
    GaugeMetricFamily,
    Metric,
)
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
        yield from self._prefix_cache()

    def _prefix_cache(self) -> Iterator[Metric]:
        families = {
            name: kind(metric, doc, labels=["model"])
            for name, kind, metric, doc in _CACHE_METRICS
        }
        for model, stats in self._registry.cache_stats().items():
            for name, family in families.items():
                family.add_metric([model], getattr(stats, name))
        yield from families.values()


# Each model's prefix cache: `CacheStats` field, kind, metric, help.
_CACHE_METRICS: tuple[tuple[str, Any, str, str], ...] = (
    (
        "lookups",
        CounterMetricFamily,
        "tiger_prefix_cache_lookups",
        "New sequences that looked for a cached prefix",
    ),
    (
        "hits",
        CounterMetricFamily,
        "tiger_prefix_cache_hits",
        "New sequences that reused a cached prefix",
    ),
    (
        "hit_tokens",
        CounterMetricFamily,
        "tiger_prefix_cache_hit_tokens",
        "Prompt tokens taken from the prefix cache, not computed",
    ),
    (
        "tokens",
        GaugeMetricFamily,
        "tiger_prefix_cache_tokens",
        "Tokens whose KV the prefix cache keeps in free rows",
    ),
    ("rows", GaugeMetricFamily, "tiger_prefix_cache_rows", "KV cache rows kept"),
)


def register_engine(registry: Any) -> EngineCollector:
    collector = EngineCollector(registry)
    REGISTRY.register(collector)
    return collector
