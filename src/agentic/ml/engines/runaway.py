"""A structured answer that repeats itself is pushed out of the loop before it runs to max_tokens.

A small model writing JSON at a temperature now and then falls into a loop inside a value
(`"customer": "1000000000…`, measured on Gemma 270M: about 1 answer in 1,000 of the peer benchmark's request):
every next `0` is ~99% likely, min-p and top-p cut the closing quote, and the answer ends at max_tokens as
invalid JSON. llama.cpp's DRY sampler ("don't repeat yourself") is the known cure; this is its rule, kept to
answers under a grammar and to long repeats only: a token that would continue a run of the answer seen before
(the last `ALLOWED` or more tokens, with no `BREAKERS` in between) has its logit lowered by
`MULTIPLIER * BASE ** (length - ALLOWED)`. A loop of one token is pushed out after ~12 repeats, a longer one the
second time round; breakers (the closing quote among them) are never lowered, so the way out stays open, and the
grammar still decides what is allowed. Text that repeats fewer than `ALLOWED` tokens is untouched.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

__all__ = ["Breakers", "RunawayGuard", "RunawayProcessor"]

ALLOWED = 8  # tokens a repeat may run before its next token is lowered (DRY's default is 2: ours only stops loops)
MULTIPLIER, BASE = 0.8, 1.75  # DRY's defaults: 0.8 logits at ALLOWED, x1.75 per token after
LONGEST = 40  # repeat lengths above ALLOWED + this are lowered as much as this (the token is out either way)
BREAKERS = ("\n", ":", '"', "*")  # DRY's default sequence breakers: a repeat never runs across one


class RunawayGuard:
    """The repeats of one answer's tokens, kept up to date token by token (O(answer length) in numpy a token).

    `_match[j]`: how many tokens before position j equal the last ones of the answer (no breaker among them):
    the answer's token j would continue a repeat that long.
    """

    def __init__(self) -> None:
        import numpy as np

        self._np = np
        self._tokens = np.zeros(0, dtype=np.int64)
        self._match = np.zeros(0, dtype=np.int64)
        self._breaks = np.zeros(0, dtype=bool)

    def feed(self, token: int, breaker: bool) -> None:
        """The answer's next token (sampled or forced); `breaker`: its text holds one of `BREAKERS`."""
        np = self._np
        if breaker:
            grown = np.zeros(len(self._tokens) + 1, dtype=np.int64)
        else:
            grown = np.concatenate(([0], np.where(self._tokens == token, self._match + 1, 0)))
        self._match = grown
        self._tokens = np.append(self._tokens, token)
        self._breaks = np.append(self._breaks, breaker)

    def penalties(self) -> dict[int, float]:
        """Logits to take off the tokens that would continue a repeat of `ALLOWED` or more (none off breakers)."""
        np = self._np
        lengths = self._match  # position j's token continues the repeat of the tokens before it
        due = np.flatnonzero((lengths >= ALLOWED) & ~self._breaks)
        out: dict[int, float] = {}
        for j in due:
            token, length = int(self._tokens[j]), min(int(lengths[j]), ALLOWED + LONGEST)
            out[token] = max(out.get(token, 0.0), MULTIPLIER * BASE ** (length - ALLOWED))
        return out

    def apply(self, logits: Any) -> int:
        """Lower the logits (llama.cpp's float array of one output) of the tokens that would go on repeating;
        how many were lowered."""
        lowered = self.penalties()
        for token, penalty in lowered.items():
            logits[token] -= penalty
        return len(lowered)


class Breakers:
    """Whether a token's text holds one of `BREAKERS`, looked up once per token."""

    def __init__(self, piece: Callable[[int], bytes]) -> None:
        self._piece = piece
        self._known: dict[int, bool] = {}

    def __call__(self, token: int) -> bool:
        breaks = self._known.get(token)
        if breaks is None:
            text = self._piece(token).decode("utf-8", errors="ignore")
            breaks = self._known[token] = any(breaker in text for breaker in BREAKERS)
        return breaks


class RunawayProcessor:
    """The guard as a llama-cpp-python logits processor (`Llama.generate`, MODEL_PARALLEL=1): each call sees the
    tokens so far, the prompt's `prompt_length` first."""

    def __init__(self, prompt_length: int, breaks: Callable[[int], bool]) -> None:
        self._guard, self._start, self._breaks = RunawayGuard(), prompt_length, breaks
        self._fed = 0

    def __call__(self, input_ids: Any, scores: Any) -> Any:
        for token in input_ids[self._start + self._fed:]:
            self._guard.feed(int(token), self._breaks(int(token)))
            self._fed += 1
        self._guard.apply(scores)
        return scores
