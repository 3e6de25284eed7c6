"""The tokens of one `llama_decode` of the batching engine, and what a KV layout asks of them.

With one KV buffer for all sequences (llama.cpp's unified cache) any mix of tokens is one ubatch. With one
buffer (stream) per sequence, llama.cpp splits a step into one ubatch per run of *consecutive* sequence ids
with *equal* token counts (`llama_batch_allocr::split_equal`), and every ubatch reads all the weights again
(about 16 ms for Gemma 270M on 2 cores, as much as four more decode tokens). So, per stream:

- a free slot between two running ones gets a filler token (no logits; its cell is removed after the decode)
  when that costs less than a split: its cells are no more than the running sequences' (every stream of a
  ubatch is attended up to the longest one's cells);
- a sequence with several tokens due (the text a JSON schema forces) feeds one a step while others run
  ("drip"), and samples again once the last is in; alone in the step it feeds them all.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

__all__ = ["StepBatch", "gap_fillers"]


def gap_fillers(running: Sequence[int], held: Mapping[int, int], longest: int) -> list[tuple[int, int]]:
    """(slot, position) of a filler for each free slot between the lowest and highest of `running` slots;
    `held`: free slot -> the position after its last cell (0: empty; a filler goes there). Empty when any of
    them holds more than `longest` cells: widening every stream's attention to them would cost more than the
    split."""
    if len(running) < 2:
        return []
    busy = set(running)
    gaps = [slot for slot in range(min(busy) + 1, max(busy)) if slot not in busy]
    if any(held.get(slot, 0) > longest for slot in gaps):
        return []
    return [(slot, held.get(slot, 0)) for slot in gaps]


class StepBatch:
    """One `llama_batch`, refilled every step."""

    def __init__(self, lib: Any, size: int, filler: int) -> None:
        """`filler`: the token id filler cells hold (any valid one; their cells are removed after the decode)."""
        self._lib = lib
        self.batch = lib.llama_batch_init(size, 0, 1)
        self._filler = filler
        self.fillers: list[tuple[int, int]] = []  # (slot, position) of this step's fillers
        self._next_filler = 0  # how many of them are in the batch
        self.filled = 0  # filler tokens decoded so far (all steps)

    @property
    def n_tokens(self) -> int:
        return int(self.batch.n_tokens)

    def reset(self, fillers: list[tuple[int, int]]) -> None:
        """Empty the batch; `fillers` (ascending slots) are added as `add` passes their slots."""
        self.batch.n_tokens = 0
        self.fillers = fillers
        self._next_filler = 0

    def add(self, token: int, position: int, seq_id: int, logits: bool) -> int:
        """Add a token (after the fillers of lower slots); returns its index in the batch."""
        while self._next_filler < len(self.fillers) and self.fillers[self._next_filler][0] < seq_id:
            slot, at = self.fillers[self._next_filler]
            self._next_filler += 1
            self._put(self._filler, at, slot, False)
            self.filled += 1
        return self._put(token, position, seq_id, logits)

    def _put(self, token: int, position: int, seq_id: int, logits: bool) -> int:
        batch, index = self.batch, self.batch.n_tokens
        batch.token[index] = token
        batch.pos[index] = position
        batch.n_seq_id[index] = 1
        batch.seq_id[index][0] = seq_id
        batch.logits[index] = logits
        batch.n_tokens = index + 1
        return index

    def drop_fillers(self, memory: Any) -> None:
        """Remove the fillers' cells (after the decode)."""
        for slot, position in self.fillers[:self._next_filler]:
            self._lib.llama_memory_seq_rm(memory, slot, position, -1)
        self.fillers = []

    def free(self) -> None:
        self._lib.llama_batch_free(self.batch)
