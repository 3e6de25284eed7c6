"""Prometheus metrics of one app instance (its own registry: no module-level state)."""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, Metric

__all__ = ["Metrics"]

LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 20, 40, 80, 160)


class Metrics:
    """Requests, errors, tokens, time to first token, latency, queue depth and in-flight, per tier and backend."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        labels = ("tier", "backend")
        self.requests = Counter("agentic_requests_total", "Requests answered", (*labels, "endpoint", "status"),
                                registry=self.registry)
        self.errors = Counter("agentic_errors_total", "Requests that ended in an error", (*labels, "code"),
                              registry=self.registry)
        self.prompt_tokens = Counter("agentic_prompt_tokens_total", "Prompt tokens processed", labels,
                                     registry=self.registry)
        self.cached_tokens = Counter("agentic_prompt_cached_tokens_total",
                                     "Prompt tokens reused from the prefix cache (hit rate: over prompt tokens)",
                                     labels, registry=self.registry)
        self.completion_tokens = Counter("agentic_completion_tokens_total", "Completion tokens generated", labels,
                                         registry=self.registry)
        self.time_to_first_token = Histogram("agentic_time_to_first_token_seconds", "Time to the first token",
                                             labels, buckets=LATENCY_BUCKETS, registry=self.registry)
        self.latency = Histogram("agentic_request_latency_seconds", "Whole request latency", labels,
                                 buckets=LATENCY_BUCKETS, registry=self.registry)
        self.queue_depth = Gauge("agentic_queue_depth", "Requests waiting for a model", labels,
                                 registry=self.registry)
        self.fallbacks = Counter("agentic_fallbacks_total", "Requests answered by a fallback backend",
                                 ("tier", "from_backend", "to_backend", "reason"), registry=self.registry)
        self.reloads = Counter("agentic_reloads_total", "Configuration reloads (ok or refused)", ("result",),
                               registry=self.registry)
        self.in_flight = Gauge("agentic_in_flight", "Requests being generated", labels, registry=self.registry)

    def count_engines(self, source: Callable[[], dict[tuple[str, str], dict[str, int]]]) -> None:
        """Export the engines' own counters (`ENGINE_COUNTERS`) per {tier, backend}, read from `source` at each
        scrape: (tier, backend) -> counter name -> count."""
        self.registry.register(_EngineCollector(source))

    def render(self) -> bytes:
        """The text exposition format."""
        return generate_latest(self.registry)


# counter name on the model -> (metric name, help); the metric gets the suffix _total
ENGINE_COUNTERS = {
    "restarts": ("agentic_engine_restarts", "Model workers that failed and were restarted (their requests ended "
                 "with 503)"),
    "forced_tokens": ("agentic_forced_tokens", "Tokens a JSON schema forced and the engine wrote without sampling "
                      "them (jump-forward)"),
}


class _EngineCollector:
    """The engines count these themselves; this reads them when Prometheus scrapes."""

    def __init__(self, source: Callable[[], dict[tuple[str, str], dict[str, int]]]) -> None:
        self.source = source

    def collect(self) -> Iterator[Metric]:
        counts = self.source()
        for counter, (name, documentation) in ENGINE_COUNTERS.items():
            family = CounterMetricFamily(name, documentation, labels=("tier", "backend"))
            for (tier, backend), values in counts.items():
                family.add_metric([tier, backend], values[counter])
            yield family
