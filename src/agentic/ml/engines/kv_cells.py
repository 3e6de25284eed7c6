"""The KV cells of one llama.cpp context's sequences (llama_batch.py): reuse, sharing, saving and writing back.

Sliding-window layers (Gemma 3: 15 of its 18 layers, a window of 512 positions) keep only the window behind each
sequence's last token, as llama-server's do (`swa_full` off): at 16 sequences x 2048 tokens the engine holds
600 MB instead of 954 MB with every cell kept. llama.cpp gives the cells a sequence has left a window behind to
new tokens when it needs room, so a sequence's cells run from some first position to its last, and a prefix of it
serves a new sequence only while the window behind that prefix's end is still there (`reaches`). A cell shared by
several sequences (one KV buffer, `llama_memory_seq_cp`) is given to no new token while more than one holds it,
even once every one of them has left it a window behind: `unshare` gives a sequence copies of its own cells.
"""

from __future__ import annotations

import ctypes
from typing import Any

__all__ = ["KvCells"]


class KvCells:
    """Sequence-level operations on the KV cells of one llama.cpp context (`unified`: one buffer for all)."""

    def __init__(self, lib: Any, ctx: Any, model: Any, unified: bool) -> None:
        self._lib, self._ctx, self.unified = lib, ctx, unified
        self.memory = lib.llama_get_memory(ctx)
        self.window = max(int(lib.llama_model_n_swa(model)), 0)  # 0: no sliding-window layers

    def first(self, slot: int) -> int:
        """The first position whose cells `slot` holds (-1: none)."""
        return int(self._lib.llama_memory_seq_pos_min(self.memory, slot))

    def last(self, slot: int) -> int:
        """The last position whose cells `slot` holds (-1: none)."""
        return int(self._lib.llama_memory_seq_pos_max(self.memory, slot))

    def reaches(self, first: int, length: int) -> bool:
        """Whether cells from position `first` on serve a sequence that goes on after its first `length` tokens: in
        sliding-window layers its next token attends to the `window` positions behind it only (in chunked ones, to
        fewer)."""
        return 0 <= first <= max(0, length - self.window + 1) if self.window else first >= 0

    def serves(self, slot: int, length: int) -> bool:
        """Whether the cells of `slot` serve a sequence that goes on after their first `length` tokens."""
        return self.reaches(self.first(slot), length)

    def clear(self, slot: int | None = None) -> None:
        """Free the cells of `slot` (of every sequence, for None)."""
        if slot is None:
            self._lib.llama_memory_clear(self.memory, True)
        else:
            self._lib.llama_memory_seq_rm(self.memory, slot, -1, -1)

    def seat(self, slot: int, keep: int, donor: int | None) -> int:
        """Give `slot` the cells of the first `keep` positions: from `donor` (shared in one buffer, the whole stream
        copied and cut otherwise), or its own cut after them. Returns how many it keeps (0 when a model's cells
        cannot be cut)."""
        lib, memory = self._lib, self.memory
        if donor is not None:
            lib.llama_memory_seq_rm(memory, slot, -1, -1)
            if self.unified:  # the cells get one more sequence id
                lib.llama_memory_seq_cp(memory, donor, slot, 0, keep)
            else:  # llama.cpp copies between streams only whole streams (at the next decode): copy, cut the tail
                lib.llama_memory_seq_cp(memory, donor, slot, -1, -1)
                lib.llama_memory_seq_rm(memory, slot, keep, -1)
            return keep
        if lib.llama_memory_seq_rm(memory, slot, keep, -1):
            return keep
        lib.llama_memory_seq_rm(memory, slot, -1, -1)  # a model whose cells cannot be cut: start over
        return 0

    def save(self, slot: int) -> tuple[Any, int] | None:
        """llama.cpp's state of the sequence in `slot` and the first position it holds (llama.cpp saves only the
        window behind the last position of sliding-window layers), or None when it cannot be saved."""
        lib = self._lib
        size = lib.llama_state_seq_get_size(self._ctx, slot)
        blob = (ctypes.c_uint8 * size)()
        if not size or lib.llama_state_seq_get_data(self._ctx, blob, size, slot) != size:
            return None
        first = self.first(slot)
        return blob, max(first, self.last(slot) + 1 - self.window) if self.window else first

    def write_back(self, slot: int, blob: Any, length: int) -> bool:
        """Write saved cells into `slot`, to serve a sequence going on after `length` tokens; False, with the slot
        empty, when llama.cpp finds no room for them or they do not reach back far enough."""
        if self._load(slot, blob) and self.serves(slot, length):
            return True
        self.clear(slot)
        return False

    def unshare(self, slot: int) -> bool:
        """Give the sequence in `slot` cells of its own (saved, then written back into free cells); False when that
        failed and its cells are gone."""
        saved = self.save(slot)
        return saved is not None and self._load(slot, saved[0])

    def _load(self, slot: int, blob: Any) -> bool:
        """Write saved cells into `slot` (llama.cpp clears the slot first); whether all of them were read."""
        return bool(self._lib.llama_state_seq_set_data(self._ctx, blob, len(blob), slot) == len(blob))
