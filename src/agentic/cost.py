"""What a workload costs on each backend: API models from a dated price table, local ones from throughput.

Prices are per 1,000 tokens, so cost = tokens / 1,000 x price. (The guide's "100 x (500 + 500) x $0.001
= $100" multiplies a per-1K price by raw tokens; the right figure is $0.10.)
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from .errors import ConfigError
from .registry import backend_classes

__all__ = ["CostLine", "PriceTable", "Workload", "api_cost", "compare", "local_backends", "local_cost"]


def local_backends() -> dict[str, str]:
    """Each installed backend running on this machine (its cost is machine time) -> the settings naming its models."""
    return {name: " / ".join(cls.tier_settings) for name, cls in backend_classes().items() if not cls.remote}


@dataclass(frozen=True)
class Workload:
    """`requests` calls with `total_input` prompt and `total_output` completion tokens in all."""

    requests: int
    total_input: int
    total_output: int

    @classmethod
    def uniform(cls, requests: int, input_tokens: int, output_tokens: int) -> Workload:
        """`requests` calls of `input_tokens` in and `output_tokens` out each (the guide's scenario)."""
        return cls(requests, requests * input_tokens, requests * output_tokens)


@dataclass(frozen=True)
class CostLine:
    """One backend's estimate; `note` says how it was computed or why it is missing."""

    backend: str
    model: str
    input_cost: float | None
    output_cost: float | None
    note: str

    @property
    def total(self) -> float | None:
        if self.input_cost is None or self.output_cost is None:
            return None
        return self.input_cost + self.output_cost


@dataclass(frozen=True)
class PriceTable:
    """Input and output prices per 1,000 tokens per model of one API backend, with the date they were taken."""

    prices: dict[str, tuple[float, float]]
    as_of: str
    source: str
    backend: str = "openai"  # the remote backend these models are served by

    @classmethod
    def load(cls, path: str | Path | None = None) -> PriceTable:
        """The shipped table, or a file of the same shape given by the user."""
        try:
            text = (Path(path).read_text() if path is not None
                    else resources.files("agentic.data").joinpath("prices.json").read_text())
            raw: dict[str, Any] = json.loads(text)
            prices = {name: (float(entry["input_per_1k"]), float(entry["output_per_1k"]))
                      for name, entry in raw["models"].items()}
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise ConfigError(
                f"Price table {path} is not usable ({type(exc).__name__}: {exc}). It must be JSON like "
                '{"as_of": "2024-10-01", "models": {"gpt-4": {"input_per_1k": 0.03, "output_per_1k": 0.06}}}.'
            ) from None
        return cls(prices, str(raw.get("as_of", "unknown date")), str(raw.get("source", path or "shipped")),
                   str(raw.get("backend", "openai")))


def api_cost(model: str, workload: Workload, table: PriceTable) -> CostLine:
    """tokens / 1,000 x the per-1K price, separately for input and output."""
    if model not in table.prices:
        return CostLine(table.backend, model, None, None, f"no price for {model!r} in the table (as of {table.as_of})")
    input_price, output_price = table.prices[model]
    return CostLine(table.backend, model, workload.total_input / 1000 * input_price,
                    workload.total_output / 1000 * output_price,
                    f"${input_price}/1K in, ${output_price}/1K out (prices as of {table.as_of})")


def local_cost(backend: str, model: str, workload: Workload, tokens_per_second: float | None,
               hardware_per_hour: float, measured: bool = False) -> CostLine:
    """Time on the machine at the given generation speed, times what an hour of it costs.

    `measured` = the speed is a finished run's output tokens over its wall time (prompt processing and
    waiting included); otherwise it is the user's figure and prompt time is not counted.
    """
    if tokens_per_second is None or tokens_per_second <= 0:
        return CostLine(backend, model, None, None, "no throughput measurement: pass --tokens-per-second "
                        "(from `make bench` or a finished run)")
    hours = workload.total_output / tokens_per_second / 3600
    how = "measured in this run, prompt time included" if measured else "prompt time not counted"
    if hardware_per_hour == 0:
        how += "; pass --hardware-per-hour to price the machine time"
    return CostLine(backend, model, 0.0, hours * hardware_per_hour,
                    f"{hours * 60:.1f} min at {tokens_per_second:.3g} output tokens/s x ${hardware_per_hour:g}/h "
                    f"({how})")


def compare(workload: Workload, table: PriceTable, hardware_per_hour: float,
            measured: dict[str, float] | None = None, tokens_per_second: float | None = None) -> list[CostLine]:
    """The workload on every priced API model and every local backend.

    A local backend's speed is its `measured` figure (a finished run) when there is one, else
    `tokens_per_second` (the user's), else it is reported as unmeasured.
    """
    measured = measured or {}
    lines = [api_cost(model, workload, table) for model in table.prices]
    for backend, label in local_backends().items():
        speed = measured.get(backend, tokens_per_second)
        lines.append(local_cost(backend, label, workload, speed, hardware_per_hour, backend in measured))
    return lines
