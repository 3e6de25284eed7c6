"""KV cells in host memory, for one llama.cpp context's batching engine (llama_batch.py).

With one KV buffer, cells held in place after their sequences end widen every decode's attention, so once the
engine idles they are saved to host memory and freed (llama-server's --cache-idle-slots); a prompt going on from
saved cells gets them written back into its slot. A sliding-window cache saves only the window behind a
sequence's end, so prompts also save their cells where prompts part on the way (prefix_cache.checkpoint_at).
"""

from __future__ import annotations

from dataclasses import replace

from .kv_cells import KvCells
from .prefix_cache import HostStore, Placement, PrefixCache, checkpoint_at

__all__ = ["HostCells"]


class HostCells:
    """Saved cells of `cells` in host memory (`store`, at most `budget` tokens), for the slots `cache` places."""

    def __init__(self, cells: KvCells, cache: PrefixCache, budget: int) -> None:
        self.cells, self.cache = cells, cache
        self.store = HostStore(budget, cells.reaches)
        self.checkpoints = 0  # prompt prefixes saved on the way (save_checkpoint)

    @property
    def checkpoints_help(self) -> bool:
        """Whether cells saved where prompts part serve prompts that a finished sequence's cells would not (only the
        window behind its end is saved in sliding-window layers)."""
        return self.cells.window > 0

    def offload_oldest(self) -> None:
        """Save the least recently used held slot's cells and free them."""
        slot, tokens = self.cache.take_oldest()
        saved = self.cells.save(slot)
        if saved is not None:
            self.store.add(tokens, *saved)
        self.cells.clear(slot)

    def place(self, prompt: list[int], placement: Placement, parting: int) -> tuple[Placement, int]:
        """`placement`, or the slot given the saved cells of a longer prefix (written back; cut to the prefix when
        seated), and where the new sequence should save its cells on the way (0: nowhere; `parting`: where a
        chat's last message begins). When the write-back fails (no room, or the cells do not reach back a window)
        the slot's own cells are gone with it, so only a donor's can still be reused."""
        length, blob, stored = self.store.best(prompt, len(prompt) - 1)
        placement = replace(placement, shared=max(placement.shared, stored))
        if length > placement.keep:
            if self.cells.write_back(placement.slot, blob, length):
                placement = replace(placement, keep=length, donor=None)
            elif placement.donor is None:
                placement = replace(placement, keep=0)
        return placement, checkpoint_at(len(prompt), placement, parting)

    def save_checkpoint(self, slot: int, tokens: list[int]) -> None:
        """`slot`'s cells now hold `tokens` (a prompt up to where prompts part): save them."""
        saved = self.cells.save(slot)
        if saved is not None:
            self.store.add(tokens, *saved)
            self.checkpoints += 1
