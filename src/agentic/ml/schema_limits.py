"""Limits a JSON schema must keep before any grammar is built from it.

Grammar compilers are native code that trusts its input: llama.cpp's parser recurses once per nested
rule and per repetition (a `maxLength` of 20,000 overflowed its stack and killed the process), and a
100,000-value enum made every masked step take seconds. So every `response_format` schema is measured
here first, on every backend, and one over a limit is a 400 naming the limit and the setting that
raises it. The defaults leave room for any realistic structured-output schema (the business-idea
schemas use a fraction of each).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from ..config import Settings
from ..errors import SchemaTooComplexError

__all__ = ["SchemaLimits", "pattern_cost"]

# Keywords whose number is how many times something repeats in the generated grammar.
_COUNT_KEYWORDS = ("minLength", "maxLength", "minItems", "maxItems", "minProperties", "maxProperties")
_QUANTIFIER = re.compile(r"\{\s*(\d+)\s*(?:,\s*(\d*)\s*)?\}")


@dataclass(frozen=True)
class SchemaLimits:
    """How large, deep and repetitive a schema may be (each limit has the setting that raises it)."""

    max_bytes: int = 32_768
    max_depth: int = 32
    max_enum: int = 1_024
    max_repeat: int = 1_000
    max_pattern: int = 1_000
    max_grammar_bytes: int = 65_536

    @classmethod
    def from_settings(cls, settings: Settings) -> SchemaLimits:
        """The limits MODEL_SCHEMA_* and MODEL_GRAMMAR_MAX_BYTES set."""
        return cls(settings.model_schema_max_bytes, settings.model_schema_max_depth, settings.model_schema_max_enum,
                   settings.model_schema_max_repeat, settings.model_schema_max_pattern,
                   settings.model_grammar_max_bytes)

    def check(self, schema: dict[str, Any] | None) -> None:
        """Raise SchemaTooComplexError (400) when `schema` is over any limit; None and {} always pass."""
        if not schema:
            return
        nodes = []
        for path, depth, node in _walk(schema):  # depth first: json.dumps below recurses
            _refuse(depth > self.max_depth, f"nests {depth} levels deep at {path}", "MODEL_SCHEMA_MAX_DEPTH",
                    self.max_depth)
            nodes.append((path, node))
        size = len(json.dumps(schema, ensure_ascii=False).encode("utf-8", "surrogatepass"))
        _refuse(size > self.max_bytes, f"is {size:,} bytes long", "MODEL_SCHEMA_MAX_BYTES", self.max_bytes)
        for path, node in nodes:
            if isinstance(node, dict):
                self._check_keywords(path, node)

    def check_grammar(self, grammar: str) -> None:
        """Refuse a generated grammar text over MODEL_GRAMMAR_MAX_BYTES (before the native parser sees it)."""
        size = len(grammar.encode("utf-8", "surrogatepass"))
        _refuse(size > self.max_grammar_bytes, f"becomes a grammar of {size:,} bytes", "MODEL_GRAMMAR_MAX_BYTES",
                self.max_grammar_bytes)

    def _check_keywords(self, path: str, node: dict[str, Any]) -> None:
        enum = node.get("enum")
        if isinstance(enum, list):
            _refuse(len(enum) > self.max_enum, f"has an enum of {len(enum):,} values at {path}",
                    "MODEL_SCHEMA_MAX_ENUM", self.max_enum)
        for keyword in _COUNT_KEYWORDS:
            value = node.get(keyword)
            if isinstance(value, int | float) and not isinstance(value, bool):
                _refuse(value > self.max_repeat, f"asks for {keyword}={value} at {path}",
                        "MODEL_SCHEMA_MAX_REPEAT", self.max_repeat)
        pattern = node.get("pattern")
        if isinstance(pattern, str):
            _refuse(len(pattern) > self.max_pattern, f"has a pattern of {len(pattern):,} characters at {path}",
                    "MODEL_SCHEMA_MAX_PATTERN", self.max_pattern)
            repeat, depth = pattern_cost(pattern)
            _refuse(repeat > self.max_repeat, f"has a pattern that repeats {repeat:,} times at {path}",
                    "MODEL_SCHEMA_MAX_REPEAT", self.max_repeat)
            _refuse(depth > self.max_depth, f"has a pattern whose groups nest {depth} deep at {path}",
                    "MODEL_SCHEMA_MAX_DEPTH", self.max_depth)


def pattern_cost(pattern: str) -> tuple[int, int]:
    """(repetitions, group depth) of a regex: the most times it repeats one thing through `{m}`, `{m,}` or
    `{m,n}`, nested bounds multiplied, and how deeply its groups nest.

    `(a{0,40}){0,30}` repeats `a` up to 1,200 times: the grammar spells repetitions out, so the product
    along a nesting is what costs. Escapes and character classes are skipped; `*` and `+` cost nothing.
    """
    stack = [0]  # per open group: the largest repetition inside it so far
    depth = 0
    closed = 0  # the value of the group that just closed, if the next token quantifies it
    index = 0
    while index < len(pattern):
        char, after_group = pattern[index], closed
        closed = 0
        if char == "\\":
            index += 2
            continue
        if char == "[":
            index = _class_end(pattern, index)
            continue
        if char == "(":
            stack.append(0)
            depth = max(depth, len(stack) - 1)
        elif char == ")" and len(stack) > 1:
            closed = stack.pop()
            stack[-1] = max(stack[-1], closed)
        elif char == "{" and (match := _QUANTIFIER.match(pattern, index)):
            bound = int(match.group(2) or match.group(1))
            stack[-1] = max(stack[-1], bound * max(after_group, 1))
            index = match.end()
            continue
        index += 1
    return max(stack), depth


def _class_end(pattern: str, start: int) -> int:
    """The index after the `]` that closes the character class opened at `start`."""
    index = start + 1
    if index < len(pattern) and pattern[index] == "^":
        index += 1
    if index < len(pattern) and pattern[index] == "]":
        index += 1
    while index < len(pattern) and pattern[index] != "]":
        index += 2 if pattern[index] == "\\" else 1
    return index + 1


def _walk(node: Any, path: str = "$", depth: int = 1) -> Iterator[tuple[str, int, Any]]:
    """Every dict and list in the schema with its JSON path and nesting depth (iterative: no recursion limit)."""
    pending = [(path, depth, node)]
    while pending:
        path, depth, node = pending.pop()
        if isinstance(node, dict):
            yield path, depth, node
            pending.extend((f"{path}.{key}", depth + 1, value) for key, value in node.items()
                           if isinstance(value, dict | list))
        elif isinstance(node, list):
            yield path, depth, node
            pending.extend((f"{path}[{index}]", depth + 1, value) for index, value in enumerate(node)
                           if isinstance(value, dict | list))


def _refuse(over: bool, what: str, setting: str, limit: int) -> None:
    if over:
        raise SchemaTooComplexError(
            f"response_format's JSON schema {what}, over the limit of {setting}={limit:,} that keeps grammar "
            f"compilation safe. Simplify the schema, or raise {setting} (.env or the environment).",
            param="response_format")
