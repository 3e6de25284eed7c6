"""Cost arithmetic: per-1K prices times thousands of tokens (the guide's $100 is $0.10)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from agentic.cli import app
from agentic.cost import PriceTable, Workload, api_cost, local_cost
from agentic.errors import ConfigError

GUIDE = Workload.uniform(requests=100, input_tokens=500, output_tokens=500)


def _flat_table(tmp_path: Path, price: float) -> PriceTable:
    path = tmp_path / "prices.json"
    path.write_text(json.dumps({"as_of": "test", "models": {"m": {"input_per_1k": price, "output_per_1k": price}}}))
    return PriceTable.load(path)


@pytest.mark.parametrize(("price", "expected"), [(0.001, 0.10), (0.03, 3.00)])
def test_guide_examples_cost_a_thousandth_of_what_the_guide_says(tmp_path: Path, price: float,
                                                                 expected: float) -> None:
    line = api_cost("m", GUIDE, _flat_table(tmp_path, price))
    assert line.total == pytest.approx(expected)  # the guide says $100 and $3,000


def test_shipped_table_prices_input_and_output_separately() -> None:
    table = PriceTable.load()
    line = api_cost("gpt-4", GUIDE, table)
    assert (line.input_cost, line.output_cost, line.total) == pytest.approx((1.5, 3.0, 4.5))
    assert table.as_of in line.note


def test_unknown_model_has_no_price_and_says_so() -> None:
    line = api_cost("gpt-9", GUIDE, PriceTable.load())
    assert line.total is None and "no price for 'gpt-9'" in line.note


def test_local_cost_from_throughput_and_hourly_price() -> None:
    line = local_cost("llama_cpp", "x", GUIDE, tokens_per_second=50.0, hardware_per_hour=0.36)
    assert line.total == pytest.approx(50_000 / 50 / 3600 * 0.36)
    missing = local_cost("llama_cpp", "x", GUIDE, tokens_per_second=None, hardware_per_hour=0.36)
    assert missing.total is None and "no throughput measurement" in missing.note


def test_bad_price_file_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "prices.json"
    path.write_text('{"models": {"m": {"input_per_1k": "cheap"}}}')
    with pytest.raises(ConfigError) as caught:
        PriceTable.load(path)
    assert str(path) in caught.value.message and "input_per_1k" in caught.value.message


def test_cost_command_prints_the_guide_scenario() -> None:
    result = CliRunner().invoke(app, ["cost"])
    assert result.exit_code == 0, result.output
    assert "100 requests x (500 in + 500 out) tokens = 50,000 input + 50,000 output tokens" in result.output
    gpt35 = next(line for line in result.output.splitlines() if line.startswith("openai") and "gpt-3.5-turbo" in line)
    assert gpt35.split()[2:5] == ["0.0250", "0.0750", "0.1000"]
    assert "no throughput measurement" in result.output
