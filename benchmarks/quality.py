"""How readable the business-idea analysis is: degenerate fields counted by rule, over every answer.

    .venv/bin/python benchmarks/quality.py [--ideas examples/business_ideas.csv benchmarks/data/unseen_ideas.csv]
                                           [--out runs/quality] [--label after]
    .venv/bin/python benchmarks/quality.py --recount runs/quality/before-business_ideas [--before-prompts]

Analyzes each idea file from scratch on the configured backend (the embedded model by default), then applies
`agentic.ideas.quality`'s rules to every answer the run kept (ranked ideas and `low_quality` ones alike) and
prints the counts: fields that repeat the instructions, copy the title, loop, or hold no words; repeated list
items; scores that contradict the verdict; the score distribution. `examples/business_ideas.csv` is the sample
the prompts were written against; `benchmarks/data/unseen_ideas.csv` was written before any tuning and is
only measured.
"""

from __future__ import annotations

import argparse
import collections
import json
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from agentic.config import load_settings  # noqa: E402
from agentic.ideas import analyzer  # noqa: E402
from agentic.ideas.quality import Instructions, answer_problems, extreme_scores, rule_of  # noqa: E402
from agentic.ideas.runner import analyze_file  # noqa: E402
from agentic.ideas.schemas import Analysis, IdeaResult, Triage  # noqa: E402
from agentic.ml.model_factory import create_model_manager  # noqa: E402

# The prompts before issue 14 (field descriptions inline, no worked example), to recount a run made with them:
# `--recount runs/quality/before-business_ideas --before-prompts`.
BEFORE_PROMPTS = {
    "triage": "You triage business ideas. Reply with a JSON object only, with the keys category (the industry, a "
              "few words), target_customer (who would pay) and summary (the idea in one line).",
    "analysis": "You are a venture analyst. Reply with a JSON object only, with the keys market (size and demand), "
                "competition (who else does this), strengths (a list of up to three), risks (a list of up to "
                "three), score (a whole number from 1, poor, to 10, excellent), verdict (pursue, refine or drop) "
                "and reason (why, in one sentence).",
}
RULES = ("instructions", "title", "loops", "empty", "same", "list", "score")


def instructions(before: bool = False) -> dict[str, Instructions]:
    """The instructions each tier is shown (with the worked examples where the analyzer has them)."""
    if before:
        return {"triage": Instructions.of(BEFORE_PROMPTS["triage"], Triage),
                "analysis": Instructions.of(BEFORE_PROMPTS["analysis"], Analysis)}
    if hasattr(analyzer, "instructions_for"):
        return {"triage": analyzer.instructions_for("light"), "analysis": analyzer.instructions_for("heavy")}
    return {"triage": Instructions.of(analyzer.TRIAGE_SYSTEM, Triage),
            "analysis": Instructions.of(analyzer.ANALYSIS_SYSTEM, Analysis)}


def count(results: list[IdeaResult], before: bool = False) -> dict[str, object]:
    """Problems by rule over every kept answer, statuses, and the score distribution."""
    shown = instructions(before)
    rules: collections.Counter[str] = collections.Counter()
    ranked_with_problems, examples = 0, []
    for result in results:
        found = []
        for part in ("triage", "analysis"):
            answer = getattr(result, part)
            if answer is not None:
                found += answer_problems(answer, result.idea.title, shown[part])
        rules.update(rule_of(problem) for problem in found)
        ranked_with_problems += result.status == "ok" and bool(found)
        examples += found[:1]
    scores = [r.analysis.score for r in results if r.analysis is not None and r.status == "ok"]
    return {"ideas": len(results), "statuses": dict(collections.Counter(r.status for r in results)),
            "problems": {rule: rules.get(rule, 0) for rule in RULES},
            "ranked_with_problems": ranked_with_problems,
            "scores": dict(sorted(collections.Counter(scores).items())),
            "extreme_scores": extreme_scores(scores), "examples": examples[:6]}


def read_results(out: Path) -> list[IdeaResult]:
    return [IdeaResult.model_validate_json(line) for line in (out / "results.jsonl").read_text().splitlines()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ideas", nargs="+", type=Path,
                        default=[ROOT / "examples/business_ideas.csv", ROOT / "benchmarks/data/unseen_ideas.csv"])
    parser.add_argument("--out", type=Path, default=ROOT / "runs/quality")
    parser.add_argument("--label", default="run")
    parser.add_argument("--recount", nargs="+", type=Path, help="Only count the results in these run folders.")
    parser.add_argument("--before-prompts", action="store_true", help="Count against the prompts before issue 14.")
    args = parser.parse_args()
    if args.recount:
        for out in args.recount:
            print(json.dumps({"run": str(out), **count(read_results(out), args.before_prompts)}))
        return
    manager = create_model_manager(load_settings())
    for ideas in args.ideas:
        out = args.out / f"{args.label}-{ideas.stem}"
        shutil.rmtree(out, ignore_errors=True)
        started = time.perf_counter()
        summary = analyze_file(manager, ideas, out, show_progress=False, cluster_threshold=None)
        row = {"label": args.label, "file": ideas.name, "wall_s": round(time.perf_counter() - started, 1),
               "completion_tokens": summary.completion_tokens, **count(read_results(out))}
        print(json.dumps(row), flush=True)
    manager.close()


if __name__ == "__main__":
    main()
