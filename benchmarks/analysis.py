"""`make run`'s analysis, in process, in alternating rounds of several configurations: wall time, tokens, rejections.

    .venv/bin/python benchmarks/analysis.py --rounds 5 --run "jump=" --run "nojump=MODEL_JUMP_FORWARD=false"
    git worktree add /tmp/before <commit>
    .venv/bin/python benchmarks/analysis.py --run "before=@/tmp/before/src" --run "now="
    .venv/bin/python benchmarks/analysis.py --parallel 16x256 --run "one=" --run "per=MODEL_KV_UNIFIED=false"

Each `--run NAME=SETTINGS` is a configuration: space-separated VAR=value settings, and `@PATH` to import agentic
from another source tree (a worktree of an older commit). Every run is a fresh process analyzing the sample ideas
(examples/business_ideas.csv) into a fresh folder, without the related-ideas pass; the rounds alternate the
configurations. Prints each run, then the medians. `--parallel NxT` times N concurrent plain generations of T
tokens (temperature 0.7, MODEL_PARALLEL=N) in process instead: the engine without HTTP.
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

PARALLEL_RUN = """
import json, sys, threading, time
from agentic.config import load_settings
from agentic.ml.model_factory import create_model_manager
count, tokens = int(sys.argv[1]), int(sys.argv[2])
manager = create_model_manager(load_settings(env_file=None, model_parallel=count, model_context_size=2048))
model, _ = manager.get(heavy=True)
topics = ["a lighthouse keeper", "how bread rises", "learning a second language", "a busy market"]
done = []
def one(index):
    answer = model(prompt=f"Write at length about {topics[index % 4]} ({index}).", max_tokens=tokens, temperature=0.7)
    done.append(answer["usage"]["completion_tokens"])
threads = [threading.Thread(target=one, args=(index,)) for index in range(count)]
started = time.perf_counter()
[thread.start() for thread in threads]
[thread.join() for thread in threads]
wall = time.perf_counter() - started
print(json.dumps({"wall_s": round(wall, 2), "completion": sum(done), "tokens_per_s": round(sum(done) / wall, 1)}))
manager.close()
"""


def run_once(settings: str, parallel: tuple[int, int] | None = None) -> dict[str, float]:
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
        command = ([sys.executable, "-c", PARALLEL_RUN, *map(str, parallel)] if parallel else
                   [sys.executable, "-c", ONE_RUN, str(ROOT / "examples/business_ideas.csv"), out])
        done = subprocess.run(command,
                              env=env, capture_output=True, text=True, check=True, cwd=out)
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--run", action="append", required=True, metavar="NAME=SETTINGS")
    parser.add_argument("--parallel", metavar="NxT", help="N concurrent plain generations of T tokens instead")
    args = parser.parse_args()
    parallel = tuple(int(part) for part in args.parallel.split("x")) if args.parallel else None
    configs = [tuple(spec.split("=", 1)) for spec in args.run]
    results: dict[str, list[dict[str, float]]] = {name: [] for name, _ in configs}
    for round_index in range(args.rounds):
        for name, settings in (configs if round_index % 2 == 0 else configs[::-1]):  # who goes first alternates
            figures = run_once(settings, parallel)  # type: ignore[arg-type]
            results[name].append(figures)
            print(f"round {round_index + 1} {name}: {figures}", flush=True)
    if parallel:
        print(f"\n| run | {args.parallel} tokens/s, median (range) |\n|---|---|")
        for name, runs in results.items():
            rates = [run["tokens_per_s"] for run in runs]
            print(f"| {name} | {statistics.median(rates):.1f} ({min(rates):.1f}-{max(rates):.1f}) |")
        return
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
