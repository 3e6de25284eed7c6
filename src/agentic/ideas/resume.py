"""Retrying a degenerate answer from where it went wrong.

An attempt that `EarlyCheck` stopped was fine up to the value that broke a rule (a copied example phrase, a
repeated list item): everything before that value is kept, and the next attempt continues it
(`continue_final_message`), rewriting that value only and starting it with another token (`avoid_first`). The
kept part is the start of the earlier answer's own tokens, so the prefix cache holds it and the retry pays for the
rewritten value and what follows, not for the whole answer again.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

__all__ = ["Resume", "last_value"]


def last_value(text: str) -> tuple[int, str] | None:
    """(index of its opening quote, its raw text) of the last string *value* in the partial JSON `text`, or None.

    Keys are told apart by where they stand (first in an object's member). A string still open at the end counts
    unless it is empty: it has only just begun.
    """
    values: list[tuple[int, int | None]] = []
    containers: list[str] = []  # "{" or "[" for each open one
    start: int | None = None
    escaped = key = expect_key = False
    for index, char in enumerate(text):
        if start is not None:  # inside a string
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == '"':
                if not key:
                    values.append((start, index))
                start = None
        elif char == '"':
            start, key = index, bool(containers) and containers[-1] == "{" and expect_key
        elif char in "{[":
            containers.append(char)
            expect_key = char == "{"
        elif char in "}]":
            containers = containers[:-1]
        elif char in ",:":
            expect_key = char == ","
    if start is not None and not key and len(text) > start + 1:
        values.append((start, None))
    if not values:
        return None
    begin, end = values[-1]
    return begin, text[begin + 1:end] if end is not None else text[begin + 1:]


class Resume:
    """What the next attempt keeps of the answer (`answered`), and the starts its rewritten value must avoid."""

    def __init__(self) -> None:
        self.answered = ""
        self.avoid: list[str] = []

    def after(self, text: str) -> None:
        """An attempt was stopped at `text` (the whole answer so far): keep it up to its last value's opening quote.

        The value's start is avoided; stopped at the same place again, the earlier starts stay avoided too.
        """
        found = last_value(text)
        if found is None:
            self.answered, self.avoid = "", []
            return
        start, value = found
        kept, avoid = text[:start + 1], value or '"'  # an empty value: its closing quote must not come first
        self.avoid = [*self.avoid, avoid] if kept == self.answered else [avoid]
        self.answered = kept

    def messages(self) -> list[dict[str, str]]:
        """The kept answer as the final assistant message, or nothing."""
        return [{"role": "assistant", "content": self.answered}] if self.answered else []

    def options(self) -> dict[str, Any]:
        """The call's arguments that continue the kept answer."""
        return {"continue_final_message": True, "avoid_first": list(self.avoid)} if self.answered else {}

    def watched(self, early: Callable[[str], bool] | None) -> Callable[[str], bool] | None:
        """The call's `stop_when`: `early` judging the whole answer, the kept part included."""
        if early is None or not self.answered:
            return early
        answered = self.answered
        return lambda text: early(answered + text)
