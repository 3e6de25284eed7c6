"""`agentic analyze`: every idea of a file through both tiers, concurrently, resumable, with usage logged."""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from ..errors import AgenticError, ConfigError
from ..ml.base import BaseModelManager
from .analyzer import CallRecord, IdeaAnalyzer
from .clusters import DEFAULT_THRESHOLD, write_clusters
from .loader import load_ideas
from .schemas import Idea, IdeaResult
from .store import ResultsLog, UsageDB

__all__ = ["RunSummary", "analyze_file", "prepare_out_dir"]

_log = logging.getLogger(__name__)


@dataclass
class RunSummary:
    """What one `analyze` run did."""

    out_dir: Path
    ideas: int
    skipped: int  # already in results.jsonl from an earlier run
    ok: int = 0
    low_quality: int = 0  # valid answers that said nothing (quality.py): kept, not ranked
    failed: int = 0
    wall_s: float = 0.0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    interrupted: bool = False
    problems: list[str] = field(default_factory=list)

    @property
    def tokens_per_second(self) -> float:
        return self.completion_tokens / self.wall_s if self.wall_s > 0 else 0.0


class _Counters:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.prompt_tokens = 0
        self.completion_tokens = 0

    def add(self, call: CallRecord) -> None:
        with self.lock:
            self.prompt_tokens += call.prompt_tokens
            self.completion_tokens += call.completion_tokens


def analyze_file(manager: BaseModelManager, ideas_path: Path, out_dir: Path, *, concurrency: int | None = None,
                 retry_failed: bool = False, show_progress: bool = True, retries: int = 2,
                 cluster_threshold: float | None = DEFAULT_THRESHOLD,
                 on_call: Callable[[CallRecord], None] | None = None) -> RunSummary:
    """Analyze the ideas of `ideas_path` not yet in `out_dir`/results.jsonl; append each result as it ends; then
    group related ideas by their embeddings (`cluster_threshold`; None: no grouping). `on_call` sees every model
    call, on the workers' threads, besides usage.db (the console counts them in the server's metrics).

    Ctrl-C stops the run: finished ideas are already on disk, and the next run skips them.
    """
    ideas, problems = load_ideas(ideas_path)
    for problem in problems:
        _log.warning("%s", problem)
    prepare_out_dir(out_dir)
    results = ResultsLog(out_dir / "results.jsonl")
    done = results.load()
    todo = [idea for idea in ideas
            if idea.id not in done or (retry_failed and done[idea.id].status != "ok")]
    summary = RunSummary(out_dir, len(ideas), len(ideas) - len(todo), problems=problems)
    if todo:
        _analyze(manager, todo, out_dir, results, summary, concurrency, show_progress, retries, on_call)
    if cluster_threshold is not None and not summary.interrupted:
        _cluster(manager, ideas, out_dir, cluster_threshold)
    return summary


def _cluster(manager: BaseModelManager, ideas: list[Idea], out_dir: Path, threshold: float) -> None:
    """The report's related ideas; a backend without embeddings only loses that section."""
    try:
        clusters = write_clusters(manager, ideas, out_dir, threshold)
    except AgenticError as exc:
        _log.warning("related ideas skipped: %s", exc.message.splitlines()[0])
        return
    _log.info("%d groups of related ideas (threshold %g)", len(clusters), threshold)


def _analyze(manager: BaseModelManager, todo: list[Idea], out_dir: Path, results: ResultsLog, summary: RunSummary,
             concurrency: int | None, show_progress: bool, retries: int,
             on_call: Callable[[CallRecord], None] | None) -> None:
    """Analyze `todo`, appending to `results` and counting into `summary`; every call also goes to `on_call`."""
    manager.load_all()  # a missing model file fails here, once, not once per idea
    usage = UsageDB(out_dir / "usage.db")
    run_id = usage.start_run(manager.backend, manager.specs["heavy"].name, manager.specs["light"].name, len(todo))
    counters = _Counters()

    def record_call(call: CallRecord) -> None:
        usage.record(run_id, call)
        counters.add(call)
        if on_call is not None:
            on_call(call)

    analyzer = IdeaAnalyzer(manager, retries=retries, on_call=record_call)
    workers = max(1, min(concurrency or manager.capacity(), len(todo)))
    started = time.perf_counter()
    try:
        for result in _run_concurrently(analyzer, todo, workers, results, counters, show_progress):
            summary.ok += result.status == "ok"
            summary.failed += result.status == "failed"
            summary.low_quality += result.status == "low_quality"
    except KeyboardInterrupt:
        summary.interrupted = True
    finally:
        summary.wall_s = time.perf_counter() - started
        summary.prompt_tokens, summary.completion_tokens = counters.prompt_tokens, counters.completion_tokens
        usage.finish_run(run_id, summary.ok, summary.failed + summary.low_quality, summary.wall_s)
        usage.close()


def prepare_out_dir(out_dir: Path) -> None:
    """Create the output folder if missing; ConfigError (naming --out) when it is a file or cannot be written."""
    if out_dir.exists() and not out_dir.is_dir():
        raise ConfigError(f"--out {out_dir} is a file, not a folder: pick a folder name (it is created if "
                          "missing).", param="--out")
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        with (out_dir / "results.jsonl").open("ab"):  # writable? (root passes any permission check)
            pass
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise ConfigError(f"--out {out_dir} cannot be created or written ({reason}: {exc.filename}): pick a "
                          "folder you can write to (it is created if missing).", param="--out") from None


def _run_concurrently(analyzer: IdeaAnalyzer, todo: list[Idea], workers: int, results: ResultsLog,
                      counters: _Counters, show_progress: bool) -> Iterator[IdeaResult]:
    """Run `todo` on `workers` threads, appending each result; the progress bar shows counts, ETA, tokens/s."""
    waiting: queue.SimpleQueue[Idea] = queue.SimpleQueue()
    for idea in todo:
        waiting.put(idea)
    finished: queue.SimpleQueue[IdeaResult] = queue.SimpleQueue()
    stop = threading.Event()

    def work() -> None:
        while not stop.is_set():
            try:
                idea = waiting.get_nowait()
            except queue.Empty:
                return
            try:
                result = analyzer.analyze(idea)
            except Exception as exc:  # noqa: BLE001 - one idea's crash must not end the batch
                _log.exception("idea %s (line %s) failed", idea.id, idea.line)
                message = exc.message if isinstance(exc, AgenticError) else f"{type(exc).__name__}: {exc}"
                result = IdeaResult(id=idea.id, status="failed", idea=idea, error=message,
                                    backend=analyzer.manager.backend)
            if not stop.is_set():
                results.append(result)
                finished.put(result)

    # Daemon threads: on Ctrl-C the process can leave without waiting for generations in flight.
    threads = [threading.Thread(target=work, name=f"analyze-{n}", daemon=True) for n in range(workers)]
    for thread in threads:
        thread.start()
    progress = Progress(TextColumn("[bold]analyzing"), BarColumn(), MofNCompleteColumn(),
                        TextColumn("ok {task.fields[ok]}, not ok {task.fields[failed]}"),
                        TextColumn("{task.fields[rate]:.1f} tokens/s"), TimeElapsedColumn(),
                        TextColumn("ETA"), TimeRemainingColumn(),
                        console=Console(stderr=True), disable=not show_progress)
    collected: list[IdeaResult] = []
    started = time.perf_counter()
    try:
        with progress:
            task = progress.add_task("analyze", total=len(todo), ok=0, failed=0, rate=0.0)
            while len(collected) < len(todo):
                try:
                    result = finished.get(timeout=0.25)
                except queue.Empty:
                    if not any(thread.is_alive() for thread in threads) and finished.empty():
                        break  # every worker ended (should not happen before all results are in)
                else:
                    collected.append(result)
                    yield result
                ok = sum(r.status == "ok" for r in collected)
                rate = counters.completion_tokens / max(time.perf_counter() - started, 1e-9)
                progress.update(task, completed=len(collected), ok=ok, failed=len(collected) - ok, rate=rate)
    finally:
        stop.set()
