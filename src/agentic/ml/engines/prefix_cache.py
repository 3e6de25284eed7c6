"""Prompt prefix reuse across the sequences of one llama.cpp context.

The batching engine keeps a finished sequence's KV cells instead of clearing them, and remembers which
tokens they hold. A new prompt goes to the free slot whose cells share the longest prefix with it, and
only the rest of the prompt is computed. When another slot (running or free) shares a longer prefix,
the new sequence gets those cells by `llama_memory_seq_cp`: in llama.cpp's unified KV cache that only
adds the sequence id to the cells, so one copy of a shared system prompt serves every sequence (the
shape of SGLang's radix cache, over slots instead of a tree). Numbers of cached tokens are reported in
`usage.prompt_tokens_details.cached_tokens`.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

__all__ = ["Placement", "PrefixCache", "common_prefix"]


@dataclass(frozen=True)
class Placement:
    """Where a new sequence goes and what it reuses."""

    slot: int
    keep: int  # leading prompt tokens whose KV cells are reused, not computed
    donor: int | None = None  # the slot whose cells [0, keep) are shared; None: the slot's own cells


def common_prefix(cached: Sequence[int], prompt: Sequence[int], limit: int) -> int:
    """How many leading tokens `cached` and `prompt` share, at most `limit`."""
    count = 0
    for left, right in zip(cached, prompt, strict=False):
        if count >= limit or left != right:
            break
        count += 1
    return count


class PrefixCache:
    """What each free slot's cells hold, and the placement of new prompts."""

    def __init__(self, enabled: bool = True) -> None:
        self.enabled = enabled
        self._held: dict[int, list[int]] = {}  # free slot -> tokens its cells hold (positions 0..n-1)
        self._used: dict[int, int] = {}  # slot -> when it was last given a sequence (LRU among equals)
        self._clock = itertools.count()

    def place(self, prompt: Sequence[int], free: list[int], running: Mapping[int, Sequence[int]]) -> Placement:
        """The slot for `prompt` among `free`, and the cells it can reuse (`running`: slot -> tokens in its cells).

        The last prompt token is always computed: its logits choose the first generated token.
        """
        limit = len(prompt) - 1 if self.enabled else 0
        shared = {slot: common_prefix(self._held.get(slot, ()), prompt, limit) for slot in free}
        slot = max(free, key=lambda s: (shared[s], -self._used.get(s, -1)))  # ties: the least recently used
        keep, donor = shared[slot], None
        for other, tokens in running.items():
            length = common_prefix(tokens, prompt, limit)
            if length > keep:
                keep, donor = length, other
        if donor is not None:  # another sequence holds more: take the free slot whose cells are worth least
            slot = min(free, key=lambda s: (s in self._held, self._used.get(s, -1)))
        self._held.pop(slot, None)
        self._used[slot] = next(self._clock)
        return Placement(slot, keep, donor)

    def hold(self, slot: int, tokens: list[int]) -> None:
        """A sequence ended in `slot`; its cells, holding `tokens`, stay for later prompts."""
        if self.enabled and tokens:
            self._held[slot] = tokens
        else:
            self._held.pop(slot, None)

    def holders(self) -> dict[int, list[int]]:
        """Free slots whose cells hold tokens."""
        return dict(self._held)

    def forget(self, slot: int | None = None) -> None:
        """The cells of `slot` (every slot, for None) were cleared."""
        if slot is None:
            self._held.clear()
        else:
            self._held.pop(slot, None)
