"""report.md, a self-contained report.html and scores.svg for an output directory of `agentic analyze`."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from html import escape
from pathlib import Path

import jinja2

from ..cost import CostLine, PriceTable, Workload, compare
from ..registry import is_remote
from .clusters import MIN_IDEAS, load_clusters
from .quality import extreme_scores
from .schemas import IdeaResult
from .store import ResultsLog, RunTotals, UsageDB

__all__ = ["Report", "build_report", "cost_of_run", "score_chart"]


@dataclass(frozen=True)
class Report:
    markdown: Path
    html: Path
    chart: Path


def cost_of_run(out_dir: Path, table: PriceTable, hardware_per_hour: float,
                tokens_per_second: float | None = None) -> tuple[list[RunTotals], dict[str, float], list[CostLine]]:
    """The run's token totals, each local backend's measured output tokens/s, and its cost on every backend."""
    usage = UsageDB(out_dir / "usage.db")
    try:
        totals, throughput = usage.totals(), usage.throughput()
    finally:
        usage.close()
    workload = Workload(sum(t.calls for t in totals), sum(t.prompt_tokens for t in totals),
                        sum(t.completion_tokens for t in totals))
    measured = {backend: tokens / seconds for backend, (tokens, seconds) in throughput.items()
                if seconds > 0 and tokens > 0 and not is_remote(backend)}
    return totals, measured, compare(workload, table, hardware_per_hour, measured, tokens_per_second)


def score_chart(results: list[IdeaResult]) -> str:
    """An SVG bar chart of how many ideas got each score from 1 to 10."""
    counts = Counter(r.analysis.score for r in results if r.analysis is not None)
    top = max(counts.values(), default=0) or 1
    width, height, bar, left, base = 440, 220, 34, 30, 180
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" role="img" '
             f'aria-label="Score distribution" viewBox="0 0 {width} {height}">',
             '<title>Ideas per score (1 = poor, 10 = excellent)</title>',
             f'<line x1="{left}" y1="{base}" x2="{left + 10 * 40}" y2="{base}" stroke="#333"/>']
    for score in range(1, 11):
        count = counts.get(score, 0)
        h = round(150 * count / top)
        x = left + (score - 1) * 40 + 3
        parts.append(f'<rect class="bar" data-score="{score}" data-count="{count}" x="{x}" y="{base - h}" '
                     f'width="{bar}" height="{h}" fill="#3b6ea5"/>')
        parts.append(f'<text x="{x + bar / 2}" y="{base + 16}" text-anchor="middle" font-size="12">{score}</text>')
        if count:
            parts.append(f'<text x="{x + bar / 2}" y="{base - h - 4}" text-anchor="middle" '
                         f'font-size="12">{count}</text>')
    parts.append(f'<text x="{left + 200}" y="{base + 34}" text-anchor="middle" font-size="12">score</text>')
    parts.append("</svg>")
    return "\n".join(parts)


def build_report(out_dir: Path, table: PriceTable, hardware_per_hour: float = 0.0) -> Report:
    """Write the three files from results.jsonl and usage.db; return their paths."""
    results = list(ResultsLog(out_dir / "results.jsonl").load().values())
    ranked = sorted((r for r in results if r.status == "ok" and r.analysis is not None),
                    key=lambda r: (-r.analysis.score, r.idea.title))  # type: ignore[union-attr]
    failed = [r for r in results if r.status == "failed"]
    low_quality = [r for r in results if r.status == "low_quality"]
    totals, measured, costs = cost_of_run(out_dir, table, hardware_per_hour)
    chart = score_chart(ranked)
    clusters, threshold = load_clusters(out_dir)
    context: dict[str, object] = {
        "clusters": clusters, "threshold": threshold, "min_ideas": MIN_IDEAS, "low_quality": low_quality,
        "score_warning": extreme_scores(r.analysis.score for r in ranked if r.analysis is not None),
        "ranked": ranked, "failed": failed, "totals": totals, "measured": measured, "costs": costs,
        "table": table, "chart": chart, "ideas": len(results),
        "prompt_tokens": sum(t.prompt_tokens for t in totals),
        "completion_tokens": sum(t.completion_tokens for t in totals),
    }
    paths = Report(out_dir / "report.md", out_dir / "report.html", out_dir / "scores.svg")
    paths.chart.write_text(chart + "\n", encoding="utf-8")
    paths.markdown.write_text(_render(_MARKDOWN, context, html=False), encoding="utf-8")
    paths.html.write_text(_render(_HTML, context, html=True), encoding="utf-8")
    return paths


def _render(template: str, context: dict[str, object], html: bool) -> str:
    env = jinja2.Environment(autoescape=html, trim_blocks=True, lstrip_blocks=True, undefined=jinja2.StrictUndefined)
    env.filters["money"] = lambda value: "n/a" if value is None else f"${value:,.4f}"
    env.filters["cell"] = lambda value: escape(str(value)).replace("|", "\\|").replace("\n", " ")
    return env.from_string(template).render(**context)


_MARKDOWN = """\
# Business idea analysis

{{ ideas }} ideas: {{ ranked | length }} analyzed, {{ low_quality | length }} low quality (not ranked), \
{{ failed | length }} failed. \
{{ prompt_tokens }} prompt + {{ completion_tokens }} completion tokens in all calls (retries included).
{% if score_warning %}

**Warning:** {{ score_warning }}.
{% endif %}

![Ideas per score](scores.svg)

## Ranking

| # | score | verdict | idea | category | reason |
|---|---|---|---|---|---|
{% for r in ranked %}
| {{ loop.index }} | {{ r.analysis.score }} | {{ r.analysis.verdict }} | {{ r.idea.title | cell }} | \
{{ r.triage.category | cell }} | {{ r.analysis.reason | cell }} |
{% endfor %}
{% if threshold is not none %}

## Related ideas

{% if clusters %}
Groups of ideas whose embeddings are close (centered cosine >= {{ threshold }}; weakest link in brackets):

{% for c in clusters %}
- {{ c.titles | join(" / ") | cell }} ({{ c.similarity }})
{% endfor %}
{% elif ideas < min_ideas %}
Too few ideas to group (fewer than {{ min_ideas }}).
{% else %}
No two ideas are closer than the threshold ({{ threshold }}).
{% endif %}
{% endif %}
{% if low_quality %}

## Low quality: not ranked

Every attempt gave a valid answer that said nothing (the model repeated its instructions, the title, or looped):

{% for r in low_quality %}
- {{ r.idea.title | cell }} (line {{ r.idea.line }}): {{ r.problems | join("; ") | cell }}
{% endfor %}
{% endif %}
{% if failed %}

## Failed

{% for r in failed %}
- {{ r.idea.title | cell }} (line {{ r.idea.line }}): {{ r.error | cell }}
{% endfor %}
{% endif %}

## Tokens and time per backend

| backend | model | tier | calls | prompt tokens | completion tokens | call seconds |
|---|---|---|---|---|---|---|
{% for t in totals %}
| {{ t.backend }} | {{ t.model | cell }} | {{ t.tier }} | {{ t.calls }} | {{ t.prompt_tokens }} | \
{{ t.completion_tokens }} | {{ "%.1f" | format(t.call_seconds) }} |
{% endfor %}
{% for backend, rate in measured.items() %}

Measured on {{ backend }}: {{ "%.1f" | format(rate) }} output tokens/s (wall time of the run).
{% endfor %}

## What these tokens cost on each backend

Prices: {{ table.source }}

| backend | model | input | output | total | how |
|---|---|---|---|---|---|
{% for c in costs %}
| {{ c.backend }} | {{ c.model | cell }} | {{ c.input_cost | money }} | {{ c.output_cost | money }} | \
{{ c.total | money }} | {{ c.note | cell }} |
{% endfor %}
"""

_HTML = """\
<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>Business idea analysis</title>
<style>
body { font-family: system-ui, sans-serif; margin: 2rem auto; max-width: 72rem; color: #222; }
table { border-collapse: collapse; margin: 1rem 0; width: 100%; }
th, td { border: 1px solid #ccc; padding: .3rem .5rem; text-align: left; vertical-align: top; }
th { background: #f0f3f7; }
td.num { text-align: right; }
.verdict-pursue { color: #1a7f37; } .verdict-refine { color: #9a6700; } .verdict-drop { color: #cf222e; }
</style>
</head>
<body>
<h1>Business idea analysis</h1>
<p id="summary">{{ ideas }} ideas: {{ ranked | length }} analyzed, {{ low_quality | length }} low quality
(not ranked), {{ failed | length }} failed.
{{ prompt_tokens }} prompt + {{ completion_tokens }} completion tokens in all calls (retries included).</p>
{% if score_warning %}
<p id="score-warning"><strong>Warning:</strong> {{ score_warning }}.</p>
{% endif %}
<figure id="score-chart">
{{ chart | safe }}
<figcaption>Ideas per score</figcaption>
</figure>
<h2>Ranking</h2>
<table id="ranking">
<thead><tr><th>#</th><th>score</th><th>verdict</th><th>idea</th><th>category</th><th>target customer</th>
<th>strengths</th><th>risks</th><th>reason</th></tr></thead>
<tbody>
{% for r in ranked %}
<tr><td class="num">{{ loop.index }}</td><td class="num">{{ r.analysis.score }}</td>
<td class="verdict-{{ r.analysis.verdict }}">{{ r.analysis.verdict }}</td>
<td><strong>{{ r.idea.title }}</strong><br>{{ r.triage.summary }}</td><td>{{ r.triage.category }}</td>
<td>{{ r.triage.target_customer }}</td><td>{{ r.analysis.strengths | join("; ") }}</td>
<td>{{ r.analysis.risks | join("; ") }}</td><td>{{ r.analysis.reason }}</td></tr>
{% endfor %}
</tbody>
</table>
{% if threshold is not none %}
<h2>Related ideas</h2>
{% if clusters %}
<p>Groups of ideas whose embeddings are close (centered cosine &ge; {{ threshold }}; weakest link in brackets):</p>
<ul id="clusters">
{% for c in clusters %}
<li>{{ c.titles | join(" / ") }} ({{ c.similarity }})</li>
{% endfor %}
</ul>
{% elif ideas < min_ideas %}
<p id="clusters">Too few ideas to group (fewer than {{ min_ideas }}).</p>
{% else %}
<p id="clusters">No two ideas are closer than the threshold ({{ threshold }}).</p>
{% endif %}
{% endif %}
{% if low_quality %}
<h2>Low quality: not ranked</h2>
<p>Every attempt gave a valid answer that said nothing (the model repeated its instructions, the title, or looped):</p>
<ul id="low-quality">
{% for r in low_quality %}
<li><strong>{{ r.idea.title }}</strong> (line {{ r.idea.line }}): {{ r.problems | join("; ") }}</li>
{% endfor %}
</ul>
{% endif %}
{% if failed %}
<h2>Failed</h2>
<ul id="failed">
{% for r in failed %}
<li>{{ r.idea.title }} (line {{ r.idea.line }}): {{ r.error }}</li>
{% endfor %}
</ul>
{% endif %}
<h2>Tokens and time per backend</h2>
<table id="usage">
<thead><tr><th>backend</th><th>model</th><th>tier</th><th>calls</th><th>prompt tokens</th><th>completion tokens</th>
<th>call seconds</th></tr></thead>
<tbody>
{% for t in totals %}
<tr><td>{{ t.backend }}</td><td>{{ t.model }}</td><td>{{ t.tier }}</td><td class="num">{{ t.calls }}</td>
<td class="num">{{ t.prompt_tokens }}</td><td class="num">{{ t.completion_tokens }}</td>
<td class="num">{{ "%.1f" | format(t.call_seconds) }}</td></tr>
{% endfor %}
</tbody>
</table>
{% for backend, rate in measured.items() %}
<p>Measured on {{ backend }}: {{ "%.1f" | format(rate) }} output tokens/s (wall time of the run).</p>
{% endfor %}
<h2>What these tokens cost on each backend</h2>
<p>Prices: {{ table.source }}</p>
<table id="cost">
<thead><tr><th>backend</th><th>model</th><th>input</th><th>output</th><th>total</th><th>how</th></tr></thead>
<tbody>
{% for c in costs %}
<tr><td>{{ c.backend }}</td><td>{{ c.model }}</td><td class="num">{{ c.input_cost | money }}</td>
<td class="num">{{ c.output_cost | money }}</td><td class="num">{{ c.total | money }}</td><td>{{ c.note }}</td></tr>
{% endfor %}
</tbody>
</table>
</body>
</html>
"""
