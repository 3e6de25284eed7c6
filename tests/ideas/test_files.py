"""The analyze run's files without a model: input rows, results.jsonl, usage.db, cost, the report."""

from __future__ import annotations

import json
import logging
import re
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import pytest
from typer.testing import CliRunner

from agentic.cli import app
from agentic.config import Settings
from agentic.cost import PriceTable
from agentic.errors import ConfigError, ModelLoadError
from agentic.ideas.analyzer import CallRecord
from agentic.ideas.loader import load_ideas
from agentic.ideas.report import build_report
from agentic.ideas.runner import analyze_file
from agentic.ideas.schemas import Analysis, Idea, IdeaResult, Triage
from agentic.ideas.store import ResultsLog, UsageDB
from agentic.ml.base import BaseModelManager, Model, ModelSpec
from conftest import make_settings

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def test_sample_file_has_twenty_valid_ideas() -> None:
    ideas, problems = load_ideas(EXAMPLES / "business_ideas.csv")
    assert len(ideas) >= 20 and problems == []
    assert len({idea.id for idea in ideas}) == len(ideas)
    assert any("," in idea.description for idea in ideas)  # quoted commas are read as text


def test_malformed_csv_rows_are_reported_by_line_and_the_rest_kept(tmp_path: Path) -> None:
    path = tmp_path / "ideas.csv"
    path.write_text("title,description\n"
                    "Good one,A fine description\n"
                    "Too many,cells,here\n"
                    ",No title\n"
                    "Only a title\n"
                    "Another good,\"With, a comma\"\n"
                    "Good one,A fine description\n")
    ideas, problems = load_ideas(path)
    assert [idea.title for idea in ideas] == ["Good one", "Another good"]
    assert [idea.line for idea in ideas] == [2, 6]
    assert len(problems) == 4
    assert problems[0].startswith("ideas.csv:3: skipped (3 cells, the header has 2")
    assert problems[1].startswith("ideas.csv:4: skipped (title")
    assert problems[2].startswith("ideas.csv:5: skipped (fewer cells")
    assert problems[3] == "ideas.csv:7: skipped (the same idea appears earlier in the file)"


def test_jsonl_input_and_its_bad_lines(tmp_path: Path) -> None:
    path = tmp_path / "ideas.jsonl"
    path.write_text('{"title": "A", "description": "first"}\n{not json\n[1, 2]\n\n{"title": "B", "description": "x"}\n')
    ideas, problems = load_ideas(path)
    assert [(idea.title, idea.line) for idea in ideas] == [("A", 1), ("B", 5)]
    assert [p.split(": skipped")[0] for p in problems] == ["ideas.jsonl:2", "ideas.jsonl:3"]


def test_missing_file_and_wrong_header_are_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no such file"):
        load_ideas(tmp_path / "nope.csv")
    bad = tmp_path / "bad.csv"
    bad.write_text("name,text\nx,y\n")
    with pytest.raises(ConfigError, match="title and description"):
        load_ideas(bad)


def _result(title: str, score: int | None, verdict: str = "pursue") -> IdeaResult:
    idea = Idea(title=title, description=f"About {title}", line=2)
    if score is None:
        return IdeaResult(id=idea.id, status="failed", idea=idea, error="no valid Analysis in 3 attempts",
                          backend="llama_cpp")
    return IdeaResult(
        id=idea.id, status="ok", idea=idea, backend="llama_cpp",
        triage=Triage(category="food", target_customer="families <b>& kids</b>", summary=f"{title} in one line"),
        analysis=Analysis(market="A large market", competition="Few rivals here", strengths=["cheap"],
                          risks=["slow"], score=score, verdict=verdict, reason="Because it is simple"))  # type: ignore[arg-type]


def _write_run(out: Path, results: list[IdeaResult], completion_tokens: int, wall_s: float) -> None:
    log = ResultsLog(out / "results.jsonl")
    for result in results:
        log.append(result)
    usage = UsageDB(out / "usage.db")
    run = usage.start_run("llama_cpp", "big.gguf", "small.gguf", len(results))
    usage.record(run, CallRecord("i1", "light", "llama_cpp", "small.gguf", 1, 300, 100, 1.0, True, None))
    usage.record(run, CallRecord("i1", "heavy", "llama_cpp", "big.gguf", 1, 700, completion_tokens - 100, 3.0,
                                 True, None))
    usage.finish_run(run, ok=len(results), failed=0, wall_s=wall_s)
    usage.close()


def test_results_log_survives_a_line_cut_short(tmp_path: Path) -> None:
    log = ResultsLog(tmp_path / "results.jsonl")
    first, second = _result("One", 7), _result("Two", 3)
    log.append(first)
    with log.path.open("a") as file:  # a crash in the middle of writing a line
        file.write(second.model_dump_json()[:40])
    assert set(log.load()) == {first.id}
    log.append(second)  # the next run starts a new line instead of gluing onto the broken one
    assert set(log.load()) == {first.id, second.id}


def test_results_log_counts_while_a_line_is_being_written(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    log = ResultsLog(tmp_path / "results.jsonl")
    assert log.counts() == {}  # no file yet
    log.append(_result("One", 7))
    log.append(_result("One", 7).model_copy(update={"status": "low_quality"}))  # the idea ran again: latest counts
    log.append(_result("Two", 3))
    with log.path.open("a") as file:  # the running analysis is halfway through its next line
        file.write(_result("Three", 5).model_dump_json()[:40])
    assert log.counts() == {"low_quality": 1, "ok": 1}
    assert "not a complete result" not in caplog.text  # a line being written is not a broken one


class _NoModel(BaseModelManager):
    """A manager with no model: every idea it is asked to run fails at once, so a test sees which ones ran."""

    backend = "none"

    @classmethod
    def tier_labels(cls, settings: Settings) -> tuple[str, str]:
        return "none", "none"

    def _resolve(self, tier: str) -> ModelSpec:
        return ModelSpec("none", "none", "test")

    def _load(self, spec: ModelSpec) -> Model:
        raise ModelLoadError("no model in this test")

    def load_all(self) -> None:
        """Nothing to load up front; `get` fails per idea."""


def _cut_inside_a_character(result: IdeaResult) -> bytes:
    """The result's line cut right after the first byte of its first multi-byte character."""
    line = result.model_dump_json().encode("utf-8")
    start = next(index for index, byte in enumerate(line) if byte >= 0xC0)
    return line[:start + 1]


def test_resume_after_a_line_cut_inside_a_multibyte_character(tmp_path: Path,
                                                               caplog: pytest.LogCaptureFixture) -> None:
    ideas_path = tmp_path / "ideas.csv"
    ideas_path.write_text("title,description\nCafé crème,Coffee for everyone\nThé vert,Tea – green and hot\n",
                          encoding="utf-8")
    (first, second), _ = load_ideas(ideas_path)
    out = tmp_path / "run"
    out.mkdir()
    done = IdeaResult(id=first.id, status="ok", idea=first, backend="llama_cpp")
    cut = _cut_inside_a_character(IdeaResult(id=second.id, status="ok", idea=second, backend="llama_cpp"))
    (out / "results.jsonl").write_bytes(done.model_dump_json().encode("utf-8") + b"\n" + cut)
    with caplog.at_level(logging.WARNING, logger="agentic.ideas.store"):
        summary = analyze_file(_NoModel(make_settings()), ideas_path, out, show_progress=False)
    assert f"{out / 'results.jsonl'}:2 is not a complete result" in caplog.text
    assert (summary.skipped, summary.failed) == (1, 1)  # the good line is kept, the cut idea ran again
    results = ResultsLog(out / "results.jsonl").load()
    assert results[first.id] == done and results[second.id].status == "failed"
    assert (out / "results.jsonl").read_bytes().split(b"\n")[1] == cut  # the new result went on a line of its own


def test_results_log_appends_after_a_cut_multibyte_character(tmp_path: Path) -> None:
    log = ResultsLog(tmp_path / "results.jsonl")
    first, second = _result("Crème brûlée", 7), _result("Ünïcode", 3)
    log.append(first)
    with log.path.open("ab") as file:
        file.write(_cut_inside_a_character(second))
    log.append(second)
    assert set(log.load()) == {first.id, second.id}


@pytest.mark.parametrize("case", ["file", "under a file"])
def test_analyze_out_that_is_not_a_folder_is_a_one_line_error(tmp_path: Path, case: str) -> None:
    blocker = tmp_path / "taken"
    blocker.write_text("not a folder")
    out = blocker if case == "file" else blocker / "run"
    ideas = tmp_path / "ideas.csv"
    ideas.write_text("title,description\nA shop,Sells things\n")
    process = subprocess.run([sys.executable, "-m", "agentic.cli", "analyze", str(ideas), "--out", str(out)],
                             capture_output=True, text=True, timeout=None)
    assert process.returncode == 2, process.stderr
    assert "Traceback" not in process.stderr
    error = [line for line in process.stderr.splitlines() if line.startswith("Error:")]
    assert len(error) == 1 and f"--out {out}" in error[0] and "pick a folder" in error[0]
    if case == "file":
        assert "is a file, not a folder" in error[0]
    assert blocker.read_text() == "not a folder"


def test_cost_from_a_finished_run(tmp_path: Path) -> None:
    _write_run(tmp_path, [_result("One", 7)], completion_tokens=2000, wall_s=40.0)
    result = CliRunner().invoke(app, ["cost", "--from", str(tmp_path), "--hardware-per-hour", "0.36"])
    assert result.exit_code == 0, result.output
    assert "2 calls, 1,000 input + 2,000 output tokens" in result.output
    assert "measured on llama_cpp: 50.0 output tokens/s" in result.output
    gpt4 = next(line for line in result.output.splitlines() if line.startswith("openai") and " gpt-4 " in line)
    assert gpt4.split()[2:5] == ["0.0300", "0.1200", "0.1500"]  # 1K x $0.03 + 2K x $0.06
    local = next(line for line in result.output.splitlines() if line.startswith("llama_cpp"))
    assert local.split()[6] == f"{2000 / 50 / 3600 * 0.36:.4f}" and "measured in this run" in local
    gpu = next(line for line in result.output.splitlines() if line.startswith("transformers_gpu"))
    assert "no throughput measurement" in gpu


def test_cost_from_a_directory_without_a_run_is_a_clear_error(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["cost", "--from", str(tmp_path)])
    assert result.exit_code == 2 and "no usage.db there" in result.output


class _Collect(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.rows: dict[str, list[list[str]]] = {}
        self.bars: list[dict[str, str | None]] = []
        self._table: str | None = None
        self._cell: list[str] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = dict(attrs)
        if tag == "table":
            self._table = values.get("id")
            self.rows[self._table or ""] = []
        elif tag == "tr" and self._table:
            self.rows[self._table].append([])
        elif tag == "td":
            self._cell = []
        elif tag == "rect" and values.get("class") == "bar":
            self.bars.append(values)

    def handle_endtag(self, tag: str) -> None:
        if tag == "td" and self._cell is not None and self._table:
            self.rows[self._table][-1].append("".join(self._cell).strip())
            self._cell = None
        elif tag == "table":
            self._table = None

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell.append(data)


def test_report_ranks_by_score_and_charts_the_distribution(tmp_path: Path) -> None:
    results = [_result("Low", 2, "drop"), _result("High", 9), _result("Mid", 6, "refine"), _result("Mid too", 6),
               _result("Broken", None)]
    _write_run(tmp_path, results, completion_tokens=1200, wall_s=30.0)
    report = build_report(tmp_path, PriceTable.load(), hardware_per_hour=1.0)
    html = report.html.read_text()
    assert not re.search(r"<script|<link|<img|src=|href=|@import|url\(", html)  # self-contained, nothing to fetch
    assert "families &lt;b&gt;&amp; kids&lt;/b&gt;" in html  # model text is escaped, never markup
    parsed = _Collect()
    parsed.feed(html)
    ranking = [row for row in parsed.rows["ranking"] if row]
    assert [(row[1], row[2]) for row in ranking] == [("9", "pursue"), ("6", "refine"), ("6", "pursue"), ("2", "drop")]
    assert ranking[0][3].startswith("High")
    counts = {int(bar["data-score"] or 0): int(bar["data-count"] or 0) for bar in parsed.bars}
    assert counts == {**dict.fromkeys(range(1, 11), 0), 2: 1, 6: 2, 9: 1}
    heights = {int(bar["data-score"] or 0): float(bar["height"] or 0) for bar in parsed.bars}
    assert heights[6] == 2 * heights[9] > 0 and heights[1] == 0
    costs = {row[1]: row for row in parsed.rows["cost"] if row}
    assert costs["gpt-4o-mini"][4] == f"${0.001 * 0.00015 * 1000 + 1.2 * 0.0006:,.4f}"
    assert "measured in this run" in costs["MODEL_7B_PATH / MODEL_1B_PATH"][5]
    assert "Broken" in html and "no valid Analysis" in html
    markdown = report.markdown.read_text()
    assert "| 1 | 9 | pursue | High |" in markdown and "![Ideas per score](scores.svg)" in markdown
    assert report.chart.read_text().startswith("<svg")
    assert json.loads(report.html.with_name("results.jsonl").read_text().splitlines()[0])["status"] == "ok"


def test_low_quality_answers_are_shown_apart_and_not_ranked(tmp_path: Path) -> None:
    problem = "reason repeats the instructions ('Why, in one sentence.')"
    echo = _result("Echo", 10).model_copy(update={"status": "low_quality", "problems": [problem]})
    results = [_result("A", 10), _result("B", 1, "drop"), _result("C", 10), _result("D", 1, "drop"),
               _result("E", 10), echo]
    _write_run(tmp_path, results, completion_tokens=1200, wall_s=30.0)
    report = build_report(tmp_path, PriceTable.load())
    parsed = _Collect()
    parsed.feed(report.html.read_text())
    ideas = [row[3] for row in parsed.rows["ranking"] if row]
    assert len(ideas) == 5 and all(idea.startswith(t) for idea, t in zip(ideas, "ACEBD", strict=True))
    assert not any("Echo" in idea for idea in ideas)
    counts = {int(bar["data-score"] or 0): int(bar["data-count"] or 0) for bar in parsed.bars}
    assert counts[10] == 3 and counts[1] == 2  # the low-quality 10 is not charted
    html, markdown = report.html.read_text(), report.markdown.read_text()
    assert "5 analyzed, 1 low quality (not ranked), 0 failed" in " ".join(html.split())
    assert "Echo</strong> (line 2): reason repeats the instructions (&#39;Why, in one sentence.&#39;)" in html
    assert "- Echo (line 2): reason repeats the instructions (" in markdown
    assert "all 5 scores are 1 or 10: the model is not telling the ideas apart" in markdown
