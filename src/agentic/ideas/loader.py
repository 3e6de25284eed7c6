"""Reading ideas from CSV (`title,description`) or JSONL; a bad row is reported by line and skipped."""

from __future__ import annotations

import csv
import json
from pathlib import Path

from pydantic import ValidationError

from ..errors import ConfigError
from .schemas import Idea

__all__ = ["load_ideas"]


def load_ideas(path: Path) -> tuple[list[Idea], list[str]]:
    """The file's valid ideas, and one message per row that could not be read (with its line number)."""
    if not path.is_file():
        raise ConfigError(f"IDEAS={str(path)!r}: no such file. Give a CSV with a title,description header "
                          "or a JSONL file of {\"title\": ..., \"description\": ...} lines.", param="IDEAS")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"IDEAS={str(path)!r} cannot be read as UTF-8 text ({exc}).", param="IDEAS") from None
    rows = _jsonl_rows(text) if path.suffix.lower() in {".jsonl", ".ndjson"} else _csv_rows(text, path)
    ideas: list[Idea] = []
    problems: list[str] = []
    seen: set[str] = set()
    for line, row in rows:
        if isinstance(row, str):
            problems.append(f"{path.name}:{line}: {row}")
            continue
        try:
            idea = Idea(title=str(row.get("title") or "").strip(),
                        description=str(row.get("description") or "").strip(), line=line)
        except ValidationError as exc:
            fields = ", ".join(f"{'.'.join(map(str, e['loc']))} {e['msg'].lower()}" for e in exc.errors())
            problems.append(f"{path.name}:{line}: skipped ({fields})")
            continue
        if idea.id in seen:
            problems.append(f"{path.name}:{line}: skipped (the same idea appears earlier in the file)")
            continue
        seen.add(idea.id)
        ideas.append(idea)
    return ideas, problems


def _csv_rows(text: str, path: Path) -> list[tuple[int, dict[str, str] | str]]:
    reader = csv.DictReader(text.splitlines(keepends=True), strict=True)
    fields = [name.strip().lower() for name in reader.fieldnames or []]
    if "title" not in fields or "description" not in fields:
        raise ConfigError(f"IDEAS={str(path)!r} has header {reader.fieldnames!r}: the first line must name the "
                          "columns title and description.", param="IDEAS")
    reader.fieldnames = fields
    rows: list[tuple[int, dict[str, str] | str]] = []
    while True:
        try:
            row = next(reader)
        except StopIteration:
            return rows
        except csv.Error as exc:
            rows.append((reader.line_num, f"skipped (not valid CSV: {exc})"))
            continue
        line = reader.line_num
        if None in row:  # more cells than the header has columns
            rows.append((line, f"skipped ({len(fields) + len(row[None])} cells, the header has {len(fields)}; "
                               "quote descriptions that contain commas)"))
        elif any(value is None for value in row.values()):
            rows.append((line, f"skipped (fewer cells than the {len(fields)} columns of the header)"))
        else:
            rows.append((line, row))


def _jsonl_rows(text: str) -> list[tuple[int, dict[str, str] | str]]:
    rows: list[tuple[int, dict[str, str] | str]] = []
    for line, raw in enumerate(text.splitlines(), start=1):
        if not raw.strip():
            continue
        try:
            value = json.loads(raw)
        except json.JSONDecodeError as exc:
            rows.append((line, f"skipped (not valid JSON: {exc.msg})"))
            continue
        rows.append((line, value if isinstance(value, dict) else "skipped (not a JSON object)"))
    return rows
