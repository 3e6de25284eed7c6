"""The console's live metrics: the server's own Prometheus registry, read every few seconds into a ring buffer.

The sampler is an asyncio task started by the first read (a page polling GET /console/api/metrics); it stops
on its own once nobody has read it for IDLE_S seconds, and the console router's lifespan cancels it when the app
stops, so no thread or task outlives the server. Rates are taken between consecutive snapshots; time to first
token is estimated from the histogram's buckets over the last QUANTILE_WINDOW_S seconds, as Prometheus'
`histogram_quantile` does.
"""

from __future__ import annotations

import asyncio
import bisect
import logging
import math
import os
import time
from collections import defaultdict, deque
from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry

from ..api.state import Server

__all__ = ["MetricsSampler", "Snapshot", "process_rss_mb", "quantile", "take_snapshot"]

_log = logging.getLogger("agentic.console")
INTERVAL_S = 2.0
WINDOW_S = 600.0  # ten minutes of history
IDLE_S = 900.0  # no read for this long: the sampler stops (the next read starts it again)
QUANTILE_WINDOW_S = 30.0
GAP_FACTOR = 2.5  # two snapshots further apart than this many intervals have a gap between them, not a rate
COMPLETION_TOKENS = "agentic_completion_tokens_total"
REQUESTS = "agentic_requests_total"
ERRORS = "agentic_errors_total"
TTFT_BUCKET = "agentic_time_to_first_token_seconds_bucket"


@dataclass(frozen=True)
class Snapshot:
    """The server's totals at one moment (counters summed over tiers and backends)."""

    at: float  # seconds since the epoch
    completion_tokens: float
    requests: float
    errors: float
    ttft_buckets: tuple[tuple[float, float], ...]  # (upper bound, cumulative count), +Inf last
    queue: int
    in_flight: int
    rss_mb: float | None


def process_rss_mb() -> float | None:
    """This process's resident memory in MiB (None where /proc is not there)."""
    try:
        with open("/proc/self/statm") as statm:
            resident_pages = int(statm.read().split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return resident_pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def _registry_totals(registry: CollectorRegistry) -> tuple[dict[str, float], dict[float, float]]:
    """Every sample summed over its labels, and the time-to-first-token buckets summed the same way."""
    sums: dict[str, float] = defaultdict(float)
    buckets: dict[float, float] = defaultdict(float)
    for family in registry.collect():
        for sample in family.samples:
            if sample.name == TTFT_BUCKET:
                buckets[float(sample.labels["le"])] += sample.value
            else:
                sums[sample.name] += sample.value
    return sums, buckets


def take_snapshot(server: Server) -> Snapshot:
    """The server's metrics now. Queue and in-flight come from the gates the /metrics gauges are set from:
    tiers that share one model share one gate, which the per-tier gauges would count twice."""
    state = server.current
    sums, buckets = _registry_totals(server.metrics.registry)
    gates = {id(gate): gate for gate in (*state.gates.values(), state.embedding_gate)}.values()
    return Snapshot(time.time(), sums[COMPLETION_TOKENS], sums[REQUESTS], sums[ERRORS],
                    tuple(sorted(buckets.items())), sum(gate.waiting for gate in gates),
                    sum(gate.running for gate in gates), process_rss_mb())


def quantile(q: float, buckets: tuple[tuple[float, float], ...]) -> float | None:
    """The q-quantile of cumulative histogram buckets, interpolated inside its bucket (None: no observation)."""
    total = buckets[-1][1] if buckets else 0.0
    if total <= 0:
        return None
    rank, lower_bound, lower_count = q * total, 0.0, 0.0
    for bound, count in buckets:
        if count >= rank:
            if math.isinf(bound):  # past the last finite bound: the best answer is that bound
                return lower_bound
            share = (rank - lower_count) / (count - lower_count) if count > lower_count else 1.0
            return lower_bound + (bound - lower_bound) * share
        lower_bound, lower_count = bound, count
    return lower_bound


def _bucket_delta(new: Snapshot, old: Snapshot) -> tuple[tuple[float, float], ...]:
    before = dict(old.ttft_buckets)
    return tuple((bound, max(count - before.get(bound, 0.0), 0.0)) for bound, count in new.ttft_buckets)


def _rounded(value: float | None, digits: int = 3) -> float | None:
    return None if value is None else round(value, digits)


def _row(new: Snapshot, old: Snapshot, base: Snapshot, interval_s: float) -> dict[str, float | None]:
    """One point of every chart: rates since `old`, time-to-first-token quantiles since `base`."""
    elapsed = new.at - old.at
    gap = elapsed <= 0 or elapsed > GAP_FACTOR * interval_s

    def rate(now: float, before: float) -> float | None:
        return None if gap else round(max(now - before, 0.0) / elapsed, 3)

    recent = _bucket_delta(new, base) if base is not new else ()
    return {"t": round(new.at, 3), "tokens_per_s": rate(new.completion_tokens, old.completion_tokens),
            "requests_per_s": rate(new.requests, old.requests), "errors_per_s": rate(new.errors, old.errors),
            "queue": new.queue, "in_flight": new.in_flight, "ttft_p50": _rounded(quantile(0.5, recent)),
            "ttft_p95": _rounded(quantile(0.95, recent)), "rss_mb": _rounded(new.rss_mb, 1)}


def series(snapshots: list[Snapshot], interval_s: float) -> dict[str, list[float | None]]:
    """Columns for the charts: time, then one value per snapshot after the first (None where there is a gap)."""
    columns: dict[str, list[float | None]] = {name: [] for name in (
        "t", "tokens_per_s", "requests_per_s", "errors_per_s", "queue", "in_flight", "ttft_p50", "ttft_p95",
        "rss_mb")}
    times = [snapshot.at for snapshot in snapshots]
    for index in range(1, len(snapshots)):
        new = snapshots[index]
        base = snapshots[bisect.bisect_left(times, new.at - QUANTILE_WINDOW_S)]
        for name, value in _row(new, snapshots[index - 1], base, interval_s).items():
            columns[name].append(value)
    return columns


class MetricsSampler:
    """Snapshots every `interval_s` seconds, the last `window_s` seconds kept; started by the first read."""

    def __init__(self, server: Server, interval_s: float = INTERVAL_S, window_s: float = WINDOW_S,
                 idle_s: float = IDLE_S) -> None:
        self.server = server
        self.interval_s = interval_s
        self.window_s = window_s
        self.idle_s = idle_s
        self.snapshots: deque[Snapshot] = deque(maxlen=int(window_s / interval_s) + 1)
        self._task: asyncio.Task[None] | None = None
        self._read_at = 0.0

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    def read(self) -> dict[str, Any]:
        """The window as chart columns, plus the latest totals; starts the sampler when it is not running."""
        self._read_at = time.monotonic()
        if not self.running:
            self._take()  # a first point at once; rates need the next one
            self._task = asyncio.get_running_loop().create_task(self._run(), name="agentic-console-sampler")
        latest = self.snapshots[-1] if self.snapshots else None
        totals = None if latest is None else {"completion_tokens": latest.completion_tokens,
                                              "requests": latest.requests, "errors": latest.errors}
        return {"interval_s": self.interval_s, "window_s": self.window_s, "now": round(time.time(), 3),
                "totals": totals, "series": series(list(self.snapshots), self.interval_s)}

    async def _run(self) -> None:
        while time.monotonic() - self._read_at < self.idle_s:
            await asyncio.sleep(self.interval_s)
            self._take()

    def _take(self) -> None:
        try:
            self.snapshots.append(take_snapshot(self.server))
        except Exception:  # noqa: BLE001 - a failed read loses one point, never the sampler
            _log.exception("console: reading the metrics failed")

    def close(self) -> None:
        """Stop sampling (the app is stopping)."""
        if self._task is not None:
            self._task.cancel()
            self._task = None
