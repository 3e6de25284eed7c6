"""What a run leaves in its output directory: results.jsonl (one line per finished idea) and usage.db.

usage.db (SQLite) schema:

    runs(run_id TEXT PRIMARY KEY, started_at TEXT, finished_at TEXT, backend TEXT, heavy_model TEXT,
         light_model TEXT, ideas INTEGER, ok INTEGER, failed INTEGER, wall_s REAL)
    calls(id INTEGER PRIMARY KEY, run_id TEXT, idea_id TEXT, tier TEXT ('heavy' | 'light'), backend TEXT,
          model TEXT, attempt INTEGER, prompt_tokens INTEGER, completion_tokens INTEGER, latency_s REAL,
          ok INTEGER (1 = valid answer), error TEXT, at TEXT (UTC ISO time))

Every model call is one `calls` row, retries and failures included, so token counts are what was paid for.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
import uuid
from collections import Counter
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from pydantic import ValidationError

from .analyzer import CallRecord
from .schemas import IdeaResult

__all__ = ["ResultsLog", "RunTotals", "UsageDB"]

_log = logging.getLogger(__name__)


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


class ResultsLog:
    """results.jsonl: appended and flushed to disk as each idea finishes, so a killed run loses nothing."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()

    def load(self, *, while_written: bool = False) -> dict[str, IdeaResult]:
        """The latest result per idea id; a line cut short by a crash is skipped with a warning.

        The file is read as bytes and each line decoded on its own: a crash inside a multi-byte character
        spoils that line only, not the whole file. `while_written`: a run is appending to the file now, so
        the part after the last newline is a line still being written, left out without a warning.
        """
        results: dict[str, IdeaResult] = {}
        try:
            lines = self.path.read_bytes().split(b"\n")
        except OSError:  # no results yet
            return results
        for number, raw in enumerate(lines[:-1] if while_written else lines, start=1):
            if not raw.strip():
                continue
            result = self._parse(raw, number)
            if result is not None:
                results[result.id] = result
        return results

    def counts(self) -> dict[str, int]:
        """Finished ideas by status (the latest result of each), while a run may be appending."""
        return dict(Counter(result.status for result in self.load(while_written=True).values()))

    def _parse(self, raw: bytes, number: int) -> IdeaResult | None:
        """One line as a result, or None (with a warning naming the file and line) when it is not one."""
        try:
            return IdeaResult.model_validate_json(raw.decode("utf-8"))
        except (UnicodeDecodeError, ValidationError):
            _log.warning("%s:%d is not a complete result (a run stopped while writing it); that idea "
                         "runs again", self.path, number)
            return None

    def append(self, result: IdeaResult) -> None:
        """Add one result as a line and flush it to disk; a line cut short before is closed first."""
        line = (result.model_dump_json() + "\n").encode("utf-8")
        with self._lock:
            # Binary mode: the last byte of a cut line may be half a UTF-8 character, which text mode cannot read.
            with self.path.open("ab+") as file:
                file.seek(0, os.SEEK_END)
                if file.tell() > 0:  # a line cut short by a crash must not swallow this one
                    file.seek(-1, os.SEEK_END)
                    if file.read(1) != b"\n":
                        line = b"\n" + line
                file.write(line)
                file.flush()
                os.fsync(file.fileno())


@dataclass(frozen=True)
class RunTotals:
    """Token and time totals of one backend/model/tier across the runs in a usage database."""

    backend: str
    model: str
    tier: str
    calls: int
    prompt_tokens: int
    completion_tokens: int
    call_seconds: float


class UsageDB:
    """usage.db: one row per model call and per run (schema in the module docstring)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.executescript("""
            CREATE TABLE IF NOT EXISTS runs(run_id TEXT PRIMARY KEY, started_at TEXT, finished_at TEXT,
                backend TEXT, heavy_model TEXT, light_model TEXT, ideas INTEGER, ok INTEGER, failed INTEGER,
                wall_s REAL);
            CREATE TABLE IF NOT EXISTS calls(id INTEGER PRIMARY KEY, run_id TEXT, idea_id TEXT, tier TEXT,
                backend TEXT, model TEXT, attempt INTEGER, prompt_tokens INTEGER, completion_tokens INTEGER,
                latency_s REAL, ok INTEGER, error TEXT, at TEXT);
        """)

    def start_run(self, backend: str, heavy_model: str, light_model: str, ideas: int) -> str:
        run_id = uuid.uuid4().hex[:12]
        with self._lock:
            self._db.execute("INSERT INTO runs(run_id, started_at, backend, heavy_model, light_model, ideas) "
                             "VALUES (?, ?, ?, ?, ?, ?)", (run_id, _now(), backend, heavy_model, light_model, ideas))
        return run_id

    def finish_run(self, run_id: str, ok: int, failed: int, wall_s: float) -> None:
        with self._lock:
            self._db.execute("UPDATE runs SET finished_at = ?, ok = ?, failed = ?, wall_s = ? WHERE run_id = ?",
                             (_now(), ok, failed, round(wall_s, 3), run_id))

    def record(self, run_id: str, call: CallRecord) -> None:
        with self._lock:
            self._db.execute(
                "INSERT INTO calls(run_id, idea_id, tier, backend, model, attempt, prompt_tokens, completion_tokens, "
                "latency_s, ok, error, at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (run_id, call.idea_id, call.tier, call.backend, call.model, call.attempt, call.prompt_tokens,
                 call.completion_tokens, call.latency_s, int(call.ok), call.error, _now()))

    def totals(self) -> list[RunTotals]:
        """Per backend, model and tier: calls, tokens and summed call latency."""
        with self._lock:
            rows = self._db.execute(
                "SELECT backend, model, tier, COUNT(*), SUM(prompt_tokens), SUM(completion_tokens), SUM(latency_s) "
                "FROM calls GROUP BY backend, model, tier ORDER BY backend, tier").fetchall()
        return [RunTotals(*row) for row in rows]

    def throughput(self) -> dict[str, tuple[int, float]]:
        """Per backend: completion tokens and wall-clock seconds of its finished runs (killed runs have no
        end time, so they are left out of the measurement)."""
        with self._lock:
            rows = self._db.execute(
                "SELECT r.backend, SUM(r.wall_s), SUM((SELECT COALESCE(SUM(c.completion_tokens), 0) FROM calls c "
                "WHERE c.run_id = r.run_id)) FROM runs r WHERE r.wall_s > 0 GROUP BY r.backend").fetchall()
        return {backend: (int(tokens), float(seconds)) for backend, seconds, tokens in rows}

    def close(self) -> None:
        with self._lock:
            self._db.close()
