"""The console's analyses: an uploaded file of ideas, analyzed inside the server by `agentic analyze`'s own code.

Each run has a folder API_RUNS_DIR/<run id> holding the upload (ideas.csv or ideas.jsonl), run.json (what the page
lists) and what `agentic analyze` writes there: results.jsonl, usage.db, report.html, report.md, scores.svg. One
run at a time, on a thread of its own, on the server's models; its progress is read from results.jsonl, which the
runner appends to as each idea ends.
"""

from __future__ import annotations

import logging
import re
import secrets
import shutil
import threading
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path, PurePath
from typing import Literal

from pydantic import BaseModel, Field, ValidationError

from ..api.pipeline import RequestContext
from ..api.state import ServerState
from ..cost import PriceTable
from ..errors import AgenticError, AnalysisRunningError, ConfigError, InvalidRequestError, RunNotFoundError
from ..ideas.analyzer import CallRecord
from ..ideas.loader import load_ideas
from ..ideas.report import build_report
from ..ideas.runner import analyze_file
from ..ideas.store import ResultsLog

__all__ = ["FILES", "AnalysisRuns", "RunRecord", "metrics_counter"]

_log = logging.getLogger("agentic.console")
RUN_ID = re.compile(r"\d{8}-\d{6}-[0-9a-f]{6}")  # the only names a run folder has; anything else is a 404
UPLOAD_SUFFIXES = (".csv", ".jsonl", ".ndjson")
RECORD = "run.json"
LISTED = 50  # newest runs the page lists
FILES = {  # what a run's folder may serve, and as what
    "report.html": "text/html; charset=utf-8",
    "report.md": "text/markdown; charset=utf-8",
    "results.jsonl": "application/x-ndjson; charset=utf-8",
    "scores.svg": "image/svg+xml",
}


class RunRecord(BaseModel):
    """run.json: one analysis started from the console."""

    id: str
    file: str = Field(description="The uploaded file's name, as the browser sent it.")
    created: str
    state: Literal["running", "done", "failed", "interrupted"] = "running"
    ideas: int
    problems: list[str] = Field(default_factory=list, description="Rows of the file that were skipped.")
    backend: str
    models: dict[str, str] = Field(default_factory=dict)
    counts: dict[str, int] = Field(default_factory=dict, description="Finished ideas by status (ok, failed...).")
    finished: str | None = None
    wall_s: float | None = None
    error: str | None = None


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _display_name(filename: str) -> str:
    """The upload's base name, printable and short: it is shown, never used as a path."""
    name = PurePath(filename.replace("\\", "/")).name
    return "".join(ch for ch in name if ch.isprintable())[:120] or "ideas"


def _upload_suffix(filename: str) -> str:
    suffix = PurePath(filename).suffix.lower()
    if suffix not in UPLOAD_SUFFIXES:
        raise InvalidRequestError(f"Upload a .csv file (with a title,description header) or a .jsonl file of "
                                  f"{{\"title\": ..., \"description\": ...}} lines; got {filename!r}.",
                                  param="filename")
    return suffix


def _read_ideas(path: Path, filename: str) -> tuple[int, list[str]]:
    """How many ideas the upload holds and which rows were skipped; a file with none is a 400 naming why."""
    try:
        ideas, problems = load_ideas(path)
    except ConfigError as exc:  # the loader names its path as the CLI's IDEAS; the page knows the upload's name
        raise InvalidRequestError(exc.message.replace(f"IDEAS={str(path)!r}", repr(filename)), param="file") from None
    prefix = f"{path.name}:"
    problems = [filename + problem[len(path.name):] if problem.startswith(prefix) else problem
                for problem in problems]
    if not ideas:
        why = "; ".join(problems[:3]) if problems else "it has no rows after the header"
        raise InvalidRequestError(f"{filename!r} holds no idea to analyze: {why}.", param="file")
    return len(ideas), problems


def metrics_counter(state: ServerState, run_id: str) -> Callable[[CallRecord], None]:
    """`analyze_file`'s on_call: each model call of a run counted as the server counts a request (endpoint
    "ideas", the call's tier, tokens and latency), so the live metrics and /metrics show console analyses."""

    def count(call: CallRecord) -> None:
        context = RequestContext(state, "ideas", call.tier, request_id=f"{run_id}/{call.idea_id}",
                                 started=time.perf_counter() - call.latency_s)
        usage = {"prompt_tokens": call.prompt_tokens, "completion_tokens": call.completion_tokens}
        # An answer the analyzer rejected (and retried) was still answered: a 200, as the server counts any answer
        # its client dislikes. Only a call that got none (the backend failed; its record keeps the message, not the
        # error) is an error.
        answered = call.ok or call.prompt_tokens + call.completion_tokens > 0
        error = None if answered else AgenticError(call.error or "The model call failed; see the server log.")
        context.record(200 if error is None else error.status_code, usage, error=error)

    return count


def _write(run_dir: Path, record: RunRecord) -> None:
    temporary = run_dir / f".{RECORD}.tmp"
    temporary.write_text(record.model_dump_json(indent=1), encoding="utf-8")
    temporary.replace(run_dir / RECORD)  # the page never reads half a record


class AnalysisRuns:
    """The runs under API_RUNS_DIR, and the one running now (at most one per server)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._running: str | None = None  # the running run's id ("" while an upload is checked, before it has one)

    def start(self, state: ServerState, runs_dir: Path, filename: str, body: bytes,
              on_end: Callable[[], None]) -> RunRecord:
        """Check the upload, store it and start analyzing it. `on_end` runs exactly once: when the analysis has
        ended, or now when the upload is refused."""
        try:
            with self._lock:
                if self._running is not None:
                    raise AnalysisRunningError("An analysis is already running; wait for it to finish (the page lists "
                                               "its progress), then upload again.")
                self._running = ""  # taken while the upload is checked
            try:
                record, ideas_path = self._prepare(state, runs_dir, filename, body)
            except BaseException:
                with self._lock:
                    self._running = None
                raise
        except BaseException:
            on_end()
            raise
        threading.Thread(target=self._work, args=(state, ideas_path, record, on_end),
                         name=f"agentic-console-run-{record.id}", daemon=True).start()
        return record.model_copy(deep=True)  # the thread goes on changing its own

    def _prepare(self, state: ServerState, runs_dir: Path, filename: str, body: bytes) -> tuple[RunRecord, Path]:
        name = _display_name(filename)
        suffix = _upload_suffix(name)
        if not body.strip():
            raise InvalidRequestError(f"{name!r} is empty: give a CSV with a title,description header or a JSONL "
                                      "file of ideas.", param="file")
        run_id = f"{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}-{secrets.token_hex(3)}"
        with self._lock:
            self._running = run_id  # before its record exists, so a reader never takes it for an interrupted run
        run_dir = runs_dir / run_id
        try:
            run_dir.mkdir(parents=True)
            (run_dir / f"ideas{suffix}").write_bytes(body)
        except OSError as exc:
            raise ConfigError(f"API_RUNS_DIR={str(runs_dir)!r} cannot be written ({exc.strerror or exc}): set it to "
                              "a folder the server can write to.", param="API_RUNS_DIR") from None
        try:
            count, problems = _read_ideas(run_dir / f"ideas{suffix}", name)
            manager = state.manager
            record = RunRecord(id=run_id, file=name, created=_now(), ideas=count, problems=problems,
                               backend=manager.backend, models={t: s.name for t, s in manager.specs.items()})
            _write(run_dir, record)
        except BaseException:
            shutil.rmtree(run_dir, ignore_errors=True)  # a refused upload leaves nothing behind
            raise
        return record, run_dir / f"ideas{suffix}"

    def _work(self, state: ServerState, ideas_path: Path, record: RunRecord, on_end: Callable[[], None]) -> None:
        """The analysis and its report, as `agentic analyze` makes them; any failure is recorded, never raised."""
        run_dir, started = ideas_path.parent, time.perf_counter()
        try:
            analyze_file(state.manager, ideas_path, run_dir, show_progress=False,
                         on_call=metrics_counter(state, record.id))
            build_report(run_dir, PriceTable.load())
            record.state = "done"
        except AgenticError as exc:
            record.state, record.error = "failed", exc.message
        except Exception as exc:  # noqa: BLE001 - the page shows that it failed; the log has the traceback
            _log.exception("console analysis %s failed", record.id)
            record.state, record.error = "failed", f"Internal error ({type(exc).__name__}); see the server log."
        finally:
            record.finished, record.wall_s = _now(), round(time.perf_counter() - started, 1)
            record.counts = ResultsLog(run_dir / "results.jsonl").counts()
            try:
                with self._lock:  # a reader sees the record "running" while _running names it, or its end
                    _write(run_dir, record)
            finally:
                with self._lock:
                    self._running = None
                on_end()

    def _load(self, run_dir: Path) -> RunRecord | None:
        try:
            with self._lock:  # the record and whether it runs, read together: a run ending between them is no crash
                record, running = RunRecord.model_validate_json((run_dir / RECORD).read_bytes()), self._running
        except (OSError, ValidationError):
            return None
        if record.state == "running":
            if record.id == running:
                record.counts = ResultsLog(run_dir / "results.jsonl").counts()
            else:  # the server stopped while it ran
                record.state = "interrupted"
        return record

    def recent(self, runs_dir: Path) -> list[RunRecord]:
        """The newest runs first."""
        try:
            folders = sorted((p for p in runs_dir.iterdir() if RUN_ID.fullmatch(p.name)), reverse=True)
        except OSError:
            return []
        return [record for folder in folders[:LISTED] if (record := self._load(folder)) is not None]

    def get(self, runs_dir: Path, run_id: str) -> RunRecord:
        """One run; an id that is not a run's (path tricks included) is a 404."""
        record = self._load(runs_dir / run_id) if RUN_ID.fullmatch(run_id) else None
        if record is None:
            raise RunNotFoundError(f"No analysis run {run_id!r} here; GET /console/api/runs lists them.",
                                   param="run_id")
        return record

    def file(self, runs_dir: Path, run_id: str, name: str) -> Path:
        """A file of a run, by one of the names of FILES only."""
        if name not in FILES:
            raise RunNotFoundError(f"A run serves only {', '.join(FILES)}; not {name!r}.", param="name")
        path = runs_dir / self.get(runs_dir, run_id).id / name
        if not path.is_file():
            raise RunNotFoundError(f"{name} of run {run_id} is not written yet (it is, once the run is done).",
                                   param="name")
        return path
