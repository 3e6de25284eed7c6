"""Degenerate answers: valid JSON that says nothing, caught before it is ranked.

A small model held to a JSON schema still fills every field, often with what it was shown instead of an answer:
the field's own description ("why, in one sentence"), the prompt's instructions, the worked example, the idea's
title, or a loop ("Why? Why? Why?", "} } }"). Each rule below names the field and what is wrong with it; the
analyzer treats any finding as invalid output (retry, then the idea is recorded as `low_quality`).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, Literal, get_origin

from pydantic import BaseModel
from pydantic_core import from_json

__all__ = ["EarlyCheck", "Instructions", "answer_problems", "extreme_scores", "loop_in", "rule_of"]

_WORD = re.compile(r"[a-z0-9]+")
_TOKEN = re.compile(r"\w+|[^\w\s]+")
_RUN = re.compile(r"(.)\1{9,}")  # one character ten times or more: "0000000000", "=========="
QUOTE_CHARS = 40


def _words(text: str) -> list[str]:
    return _WORD.findall(text.lower())


def _trigrams(words: list[str]) -> set[tuple[str, ...]]:
    return {tuple(words[i:i + 3]) for i in range(len(words) - 2)}


@dataclass
class Instructions:
    """Everything the model was shown that is not the idea: the prompt's instructions, each field's description
    and the worked example's values. An answer that repeats any of it did not answer."""

    texts: list[str]
    phrases: set[str] = field(init=False)
    trigrams: set[tuple[str, ...]] = field(init=False)

    def __post_init__(self) -> None:
        clauses = [clause for text in self.texts for clause in re.split(r"[.,;:()?!\n\"]+", text)]
        self.phrases = {" ".join(_words(clause)) for clause in clauses} - {""}
        self.trigrams = set().union(*(_trigrams(_words(text)) for text in self.texts)) if self.texts else set()

    @classmethod
    def of(cls, system: str, schema: type[BaseModel], examples: Iterable[BaseModel] = ()) -> Instructions:
        """The instructions of one call: its system prompt, the schema's descriptions, the examples' strings."""
        properties = schema.model_json_schema().get("properties", {})
        texts = [system, *(str(spec.get("description", "")) for spec in properties.values())]
        # A label field (LABELS: a category) names a class many ideas share: an example's value there is not copied
        # when a food idea is filed under the example's "food and drink" too.
        texts += [text for example in examples for name, text in _strings(example)
                  if name not in getattr(type(example), "LABELS", ())]
        return cls([text for text in texts if text])

    def repeated_by(self, text: str) -> bool:
        """True when `text` is one of the instructions' phrases, or half its word trigrams come from them."""
        words = _words(text)
        if " ".join(words) in self.phrases:
            return True
        grams = _trigrams(words)
        return len(grams) >= 2 and len(grams & self.trigrams) >= len(grams) / 2


def _strings(answer: BaseModel) -> Iterator[tuple[str, str]]:
    """(field, text) of every free-text string in an answer, list items included (named field[i]); a field
    with fixed choices (a Literal, like the verdict) is the schema's to check."""
    fields = type(answer).model_fields
    for name, value in answer:
        if get_origin(fields[name].annotation) is Literal:
            continue
        if isinstance(value, str):
            yield name, value
        elif isinstance(value, list):
            yield from ((f"{name}[{i}]", item) for i, item in enumerate(value) if isinstance(item, str))


def _quote(text: str) -> str:
    return repr(text if len(text) <= QUOTE_CHARS else text[:QUOTE_CHARS] + "...")


def loop_in(text: str, *, unfinished: bool = False) -> str | None:
    """The repeated piece when `text` loops: a 1-2 token piece three times running, a longer one twice,
    a character ten times, or long text with few distinct tokens.

    `unfinished`: text still being written, judged only by what more text cannot undo (a last word not yet
    followed by a space may still grow, and new words can still lift the share of distinct ones).
    """
    if match := _RUN.search(text):
        return match.group(0)[:12]
    tokens = _TOKEN.findall(text.lower())
    if unfinished and text[-1:] and not text[-1].isspace():
        tokens = tokens[:-1]
    for size in range(1, 7):
        needed = 3 if size <= 2 else 2
        for start in range(len(tokens) - size * needed + 1):
            piece = tokens[start:start + size]
            if all(tokens[start + k * size:start + (k + 1) * size] == piece for k in range(1, needed)):
                if size > 1 or not piece[0].isdigit():  # "1 1 1" can be data
                    return " ".join(piece)
    if not unfinished and len(tokens) >= 12 and len(set(tokens)) < 0.35 * len(tokens):
        return "few distinct words"
    return None


def _copies_title(text: str, title: str) -> bool:
    """The field is the title, or its first two words or more in order (a product is not a customer)."""
    words, title_words = _words(text), _words(title)
    return len(words) >= min(2, len(title_words)) and title_words[:len(words)] == words


def _field_problems(name: str, text: str, title: str, instructions: Instructions) -> Iterator[str]:
    if not _words(text):
        yield f"{name} has no words ({_quote(text)})"
    elif (piece := loop_in(text)) is not None:
        yield f"{name} loops ({piece!r} repeated in {_quote(text)})"
    elif instructions.repeated_by(text):
        yield f"{name} repeats the instructions ({_quote(text)})"
    elif _copies_title(text, title):
        yield f"{name} copies the idea's title ({_quote(text)})"


def _same_text_problems(answer: BaseModel) -> Iterator[str]:
    """Two free-text fields that say the same thing ("market": "dog bakery", "competition": "dog bakery")."""
    seen: dict[str, str] = {}
    for name, text in _strings(answer):
        key = " ".join(_words(text))
        if "[" not in name and key in seen:
            yield f"{seen[key]} and {name} say the same ({_quote(text)})"
        seen.setdefault(key, name)


def _list_problems(answer: BaseModel) -> Iterator[str]:
    lists = {name: [" ".join(_words(item)) for item in value] for name, value in answer
             if isinstance(value, list)}
    for name, items in lists.items():
        if len(set(items)) < len(items):
            yield f"{name} repeats an item"
    if "strengths" in lists and "risks" in lists and set(lists["strengths"]) & set(lists["risks"]):
        yield "the same point is listed as a strength and a risk"


def _score_problem(answer: BaseModel) -> str | None:
    score, verdict = getattr(answer, "score", None), getattr(answer, "verdict", None)
    if isinstance(score, int) and ((score >= 8 and verdict == "drop") or (score <= 3 and verdict == "pursue")):
        return f"score {score} contradicts the verdict {verdict!r}"
    return None


def answer_problems(answer: BaseModel, title: str, instructions: Instructions) -> list[str]:
    """Every degeneracy found in one validated answer; empty when it reads as a real answer."""
    found = [problem for name, text in _strings(answer)
             for problem in _field_problems(name, text, title, instructions)]
    found += [*_same_text_problems(answer), *_list_problems(answer)]
    if (problem := _score_problem(answer)) is not None:
        found.append(problem)
    return found


class EarlyCheck:
    """Watches an answer while it is written (the `stop_when` of a local model's call) and says, as soon as it is
    sure, that the whole answer would be degenerate: `problems` then says why.

    A finished string or list item does not change, so every rule of `answer_problems` applies to the values
    finished so far; a string still being written is judged only for loops. Neither can be undone by what
    follows, so an answer stopped here is one the full check would have refused.
    """

    LOOP_EVERY = 8  # characters between two loop checks of the string being written

    def __init__(self, schema: type[BaseModel], title: str, instructions: Instructions) -> None:
        self.schema, self.title, self.instructions = schema, title, instructions
        self.problems: list[str] = []
        self._quotes, self._looked = 0, 0
        self._checked: tuple[dict[str, Any], list[str]] = ({}, [])  # finished values last held to the rules, and why

    def __call__(self, text: str) -> bool:
        quotes = text.count('"')
        if quotes != self._quotes:  # a string or list item began or ended
            self._quotes = quotes
            self.problems = self._finished_problems(text)
        elif len(text) - self._looked >= self.LOOP_EVERY:
            self._looked = len(text)
            self.problems = self._loop_problems(text)
        return bool(self.problems)

    def _parse(self, text: str, trailing: bool) -> dict[str, Any]:
        try:
            value = from_json(text, allow_partial="trailing-strings" if trailing else True)
        except ValueError:
            return {}
        return value if isinstance(value, dict) else {}

    def _finished_problems(self, text: str) -> list[str]:
        fields = self.schema.model_fields
        done = {name: value for name, value in self._parse(text, False).items() if name in fields}
        if done != self._checked[0]:  # else a string only began: nothing new is finished
            self._checked = (done, answer_problems(self.schema.model_construct(**done), self.title, self.instructions))
        return self._checked[1]

    def _loop_problems(self, text: str) -> list[str]:
        done, written = self._parse(text, False), self._parse(text, True)
        for name, value in written.items():  # the one string being written: new, or a list's new last item
            if isinstance(value, list) and value and len(value) > len(done.get(name) or []):
                name, value = f"{name}[{len(value) - 1}]", value[-1]
            elif name in done:
                continue
            if isinstance(value, str) and (piece := loop_in(value, unfinished=True)) is not None:
                return [f"{name} loops ({piece!r} repeated in {_quote(value)})"]
        return []


def rule_of(problem: str) -> str:
    """The rule a problem message comes from, for counting: loops, instructions, title, empty, same, list,
    score."""
    for marker, rule in ((" loops ", "loops"), ("repeats the instructions", "instructions"),
                         ("copies the idea's title", "title"), ("has no words", "empty"),
                         ("contradicts the verdict", "score"), ("repeats an item", "list"),
                         ("strength and a risk", "list"), (" say the same ", "same")):
        if marker in problem:
            return rule
    return "other"


def extreme_scores(scores: Iterable[Any]) -> str | None:
    """A run-level warning when five or more scores are all 1 or 10: the model is not telling ideas apart."""
    values = [score for score in scores if isinstance(score, int)]
    if len(values) >= 5 and all(score in (1, 10) for score in values):
        return f"all {len(values)} scores are 1 or 10: the model is not telling the ideas apart"
    return None
