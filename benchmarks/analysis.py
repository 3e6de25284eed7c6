"""`make run`'s analysis, in process, in alternating rounds of several configurations: wall time, tokens, rejections.

    .venv/bin/python benchmarks/analysis.py --rounds 5 --run "jump=" --run "nojump=MODEL_JUMP_FORWARD=false"
    git worktree add /tmp/before <commit>
    .venv/bin/python benchmarks/analysis.py --run "before=@/tmp/before/src" --run "now="

Each `--run NAME=SETTINGS` is a configuration: space-separated VAR=value settings, and `@PATH` to import agentic
from another source tree (a worktree of an older commit). Every run is a fresh process analyzing the sample ideas
(examples/business_ideas.csv) into a fresh folder, without the related-ideas pass; the rounds alternate the
configurations. Prints each run, then the medians.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

ONE_RUN = """
import json, sys, time
from pathlib import Path
from agentic.config import load_settings
from agentic.ideas.runner import analyze_file
from agentic.ml.model_factory import create_model_manager
manager = create_model_manager(load_settings(env_file=None))
manager.load_all()
calls = []
started = time.perf_counter()
summary = analyze_file(manager, Path(sys.argv[1]), Path(sys.argv[2]), show_progress=False, on_call=calls.append,
                       cluster_threshold=None)
wall = time.perf_counter() - started
rejected = [call for call in calls if not call.ok]
print(json.dumps({"wall_s": round(wall, 1), "completion": summary.completion_tokens, "calls": len(calls),
                  "rejected": len(rejected), "rejected_tokens": sum(call.completion_tokens for call in rejected),
                  "ok": summary.ok, "low_quality": summary.low_quality, "failed": summary.failed}))
manager.close()
"""


def run_once(settings: str) -> dict[str, float]:
    env = {key: value for key, value in os.environ.items() if not key.startswith(("MODEL_", "OPENAI_", "GPU_"))}
    source = str(ROOT / "src")
    for item in settings.split():
        if item.startswith("@"):
            source = item[1:]
        else:
            key, _, value = item.partition("=")
            env[key] = value
    env["PYTHONPATH"] = source
    with tempfile.TemporaryDirectory() as out:
        done = subprocess.run([sys.executable, "-c", ONE_RUN, str(ROOT / "examples/business_ideas.csv"), out],
                              env=env, capture_output=True, text=True, check=True, cwd=out)
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--run", action="append", required=True, metavar="NAME=SETTINGS")
    args = parser.parse_args()
    configs = [tuple(spec.split("=", 1)) for spec in args.run]
    results: dict[str, list[dict[str, float]]] = {name: [] for name, _ in configs}
    for round_index in range(args.rounds):
        for name, settings in (configs if round_index % 2 == 0 else configs[::-1]):  # who goes first alternates
            figures = run_once(settings)
            results[name].append(figures)
            print(f"round {round_index + 1} {name}: {figures}", flush=True)
    print("\n| run | analysis wall s, median (range) | completion tokens/s | rejected calls | rejected tokens/call |")
    print("|---|---|---|---|---|")
    for name, runs in results.items():
        walls = [run["wall_s"] for run in runs]
        rate = statistics.median(run["completion"] / run["wall_s"] for run in runs)
        per_call = statistics.median(run["rejected_tokens"] / max(run["rejected"], 1) for run in runs)
        print(f"| {name} | {statistics.median(walls):.1f} ({min(walls):.1f}-{max(walls):.1f}) | {rate:.0f} | "
              f"{statistics.median(run['rejected'] for run in runs):g} | {per_call:.0f} |")


if __name__ == "__main__":
    main()
