"""Prompt prefix reuse across the sequences of one llama.cpp context.

The batching engine keeps a finished sequence's KV cells instead of clearing them, and remembers which
tokens they hold. A new prompt goes to the free slot whose cells share the longest prefix with it, and
only the rest of the prompt is computed. When another slot (running or free) shares a longer prefix,
the new sequence gets those cells by `llama_memory_seq_cp`: in llama.cpp's unified KV cache that only
adds the sequence id to the cells, so one copy of a shared system prompt serves every sequence (the
shape of SGLang's radix cache, over slots instead of a tree); with one KV stream per sequence it is a
copy of the donor's stream. Numbers of cached tokens are reported in
`usage.prompt_tokens_details.cached_tokens`.

In the unified cache, cells held in place widen every decode's attention (up to the last used cell), so the
engine moves them to a `HostStore` once it idles: host memory, as llama.cpp's state of one sequence; a later
prompt with that prefix gets them written back into its own cells.
"""

from __future__ import annotations

import itertools
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

__all__ = ["CHECKPOINT_MIN", "HostStore", "Placement", "PrefixCache", "checkpoint_at", "common_prefix"]

CHECKPOINT_MIN = 64  # prompt tokens a checkpoint must save computing (it splits the prompt's prefill in two)


@dataclass(frozen=True)
class Placement:
    """Where a new sequence goes and what it reuses."""

    slot: int
    keep: int  # leading prompt tokens whose KV cells are reused, not computed
    donor: int | None = None  # the slot whose cells [0, keep) are shared; None: the slot's own cells
    shared: int = 0  # leading prompt tokens some cached sequence holds, whether or not its cells still serve them


def common_prefix(cached: Sequence[int], prompt: Sequence[int], limit: int) -> int:
    """How many leading tokens `cached` and `prompt` share, at most `limit`."""
    count = 0
    for left, right in zip(cached, prompt, strict=False):
        if count >= limit or left != right:
            break
        count += 1
    return count


def checkpoint_at(prompt_length: int, placement: Placement, parting: int = 0) -> int:
    """Where a new sequence should save its cells on its way through its prompt (0: nowhere).

    In a sliding-window cache a finished sequence keeps only the window behind its end, so a long system prompt
    followed by different questions would be computed again for each question. Cells saved where prompts part
    serve the next one (as llama-server's context checkpoints do): at `parting` (the start of a chat's last
    message) or at the longest prefix a cached sequence shares with the prompt but cannot serve it from
    (`placement.shared`), whichever comes first, once it is `CHECKPOINT_MIN` or more tokens past what `placement`
    reuses."""
    ends = [end for end in (parting, placement.shared) if placement.keep + CHECKPOINT_MIN <= end < prompt_length]
    return min(ends, default=0)


class PrefixCache:
    """What each free slot's cells hold, and the placement of new prompts."""

    def __init__(self, enabled: bool = True, budget: int | None = None, compact: bool = False) -> None:
        """`budget`: at most this many tokens held in all (None: no limit). Every cell held widens every decode
        step's attention in a unified KV cache: measured 2026-11-26, one stream decoded ~10% slower with 19,310
        cells held by 15 free slots than with none (scratch in-process run, 6 alternating rounds).
        `compact`: a new sequence takes the lowest empty slot (with one KV stream per sequence, running slots
        with no gap between them decode in one ubatch), else the least recently used one."""
        self.enabled = enabled
        self.compact = compact
        self.budget = budget
        self._held: dict[int, list[int]] = {}  # free slot -> tokens its cells hold (positions 0..n-1)
        self._used: dict[int, int] = {}  # slot -> when it was last given a sequence (LRU among equals)
        self._clock = itertools.count()

    def place(self, prompt: Sequence[int], free: list[int], running: Mapping[int, Sequence[int]],
              reusable: Callable[[int, int], bool] = lambda slot, length: True) -> Placement:
        """The slot for `prompt` among `free`, and the cells it can reuse (`running`: slot -> tokens in its cells;
        `reusable(slot, length)`: whether the slot's cells still hold what a sequence going on from its first
        `length` tokens needs; a sliding-window cache keeps only the window behind each sequence's last token).

        The cells come from whichever slot, free or running, shares the longest usable prefix. The slot given is that
        one when the prompt goes on from all it holds (nothing is lost), else an empty slot, else the least
        recently used: a slot whose cells the prompt shares only in part keeps them for the prompts after it,
        and a one-token match (every prompt starts with BOS) never evicts a useful prefix. The last prompt
        token is always computed: its logits choose the first generated token.
        """
        limit = len(prompt) - 1 if self.enabled else 0
        keep, donor, shared = 0, None, 0
        for other, tokens in itertools.chain(((s, self._held.get(s, ())) for s in free), running.items()):
            length = common_prefix(tokens, prompt, limit)
            shared = max(shared, length)
            if length > keep and reusable(other, length):
                keep, donor = length, other
        if donor in self._held and keep == len(self._held[donor]):
            slot = donor
        else:
            slot = min(free, key=lambda s: (s in self._held, s if self.compact and s not in self._held
                                            else self._used.get(s, -1)))
        self._held.pop(slot, None)
        self._used[slot] = next(self._clock)
        return Placement(slot, keep, None if donor == slot else donor, shared)

    def hold(self, slot: int, tokens: list[int]) -> list[int]:
        """A sequence ended in `slot`; its cells, holding `tokens`, stay for later prompts. Returns the slots
        whose cells the caller must now clear: the least recently used, while more than the budget is held (the
        newest stays even alone over it)."""
        if not (self.enabled and tokens):
            self._held.pop(slot, None)
            return []
        self._held[slot] = tokens
        evicted: list[int] = []
        oldest_first = sorted((s for s in self._held if s != slot), key=lambda s: self._used.get(s, -1))
        total = sum(map(len, self._held.values()))
        while self.budget is not None and oldest_first and total > self.budget:
            evicted.append(oldest_first.pop(0))
            total -= len(self._held.pop(evicted[-1]))
        return evicted

    def take_oldest(self) -> tuple[int, list[int]]:
        """The least recently used held slot and its tokens, no longer held (the caller frees its cells)."""
        slot = min(self._held, key=lambda s: self._used.get(s, -1))
        return slot, self._held.pop(slot)

    def holders(self) -> dict[int, list[int]]:
        """Free slots whose cells hold tokens."""
        return dict(self._held)

    def forget(self, slot: int | None = None) -> None:
        """The cells of `slot` (every slot, for None) were cleared."""
        if slot is None:
            self._held.clear()
        else:
            self._held.pop(slot, None)


class HostStore:
    """Saved KV cells of finished sequences (opaque blobs, by the tokens they hold), least recently used first
    out once more than `budget` tokens are stored (the newest stays even alone over it).

    `reaches(first, length)`: whether cells saved from position `first` on serve a sequence that goes on after its
    first `length` tokens (in a sliding-window cache a saved sequence holds only the window behind its end)."""

    def __init__(self, budget: int, reaches: Callable[[int, int], bool] = lambda first, length: True) -> None:
        self.budget = budget
        self._reaches = reaches
        self._entries: OrderedDict[int, tuple[list[int], Any, int]] = OrderedDict()
        self._keys = itertools.count()

    def add(self, tokens: list[int], blob: Any, first: int = 0) -> None:
        """Store `blob`, the cells of `tokens` from position `first` on; an entry whose tokens begin these (an earlier
        turn) goes, unless it serves a prompt going on from all it holds and this one does not."""
        for key, (held, _, _) in list(self._entries.items()):
            if len(held) <= len(tokens) and tokens[:len(held)] == held and self._reaches(first, len(held)):
                del self._entries[key]
        self._entries[next(self._keys)] = (tokens, blob, first)
        while self.tokens > self.budget and len(self._entries) > 1:
            self._entries.popitem(last=False)

    def best(self, prompt: Sequence[int], limit: int) -> tuple[int, Any, int]:
        """The longest stored prefix of `prompt` (at most `limit` tokens) whose cells serve it and its blob ((0, None)
        without one), and the longest any entry holds, whether or not its cells serve it."""
        length, blob, found, longest = 0, None, None, 0
        for key, (tokens, entry, first) in self._entries.items():
            shared = common_prefix(tokens, prompt, limit)
            longest = max(longest, shared)
            if shared > length and self._reaches(first, shared):
                length, blob, found = shared, entry, key
        if found is not None:
            self._entries.move_to_end(found)
        return length, blob, longest

    def entries(self) -> list[tuple[list[int], Any]]:
        """(tokens, blob) of every entry, least recently used first."""
        return [(tokens, blob) for tokens, blob, _ in self._entries.values()]

    @property
    def tokens(self) -> int:
        """Tokens stored in all."""
        return sum(len(tokens) for tokens, _, _ in self._entries.values())

    def clear(self) -> None:
        self._entries.clear()
