"""MODEL_MEMORY_BUDGET_MB: make room for a model, or refuse it, instead of meeting the OOM killer.

Before a tier's model loads, its manager estimates what it will hold (for llama.cpp: the GGUF weights plus
the KV cache of MODEL_PARALLEL x MODEL_CONTEXT_SIZE tokens, plus a tenth for buffers). When the models
already loaded plus the new one would pass the budget, the least recently used models that are not
generating are unloaded first (the next request for them loads them again, as with MODEL_KEEP_ALIVE);
when that is not enough, the load is refused with a `MemoryBudgetError` that names the figures and the
settings that lower them. 0 (the default) means no budget.

A model handed out by `manager.get()` but not called yet counts as idle: if another tier's load evicts
it, calling it raises `ModelClosedError` (503 `model_unloaded`); `get()` again loads it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from ..errors import MemoryBudgetError

__all__ = ["MemoryBudget"]

_log = logging.getLogger(__name__)


@dataclass
class _Held:
    name: str
    mb: float


class MemoryBudget:
    """What the loaded models hold, against MODEL_MEMORY_BUDGET_MB."""

    def __init__(self, budget_mb: int) -> None:
        self.budget_mb = budget_mb
        self._held: dict[str, _Held] = {}

    @property
    def enabled(self) -> bool:
        return self.budget_mb > 0

    @property
    def held_mb(self) -> float:
        return sum(held.mb for held in self._held.values())

    def make_room(self, name: str, need_mb: float, idle: Mapping[str, float],
                  unload: Callable[[str], bool]) -> None:
        """Unload idle models (`idle`: key -> last used, oldest first wins) until `need_mb` fits, or refuse.

        Call with the manager's loading lock held; `unload(key)` closes a model and forgets it (False: a
        generation started on it meanwhile, so it stays).
        """
        if need_mb > self.budget_mb:
            raise MemoryBudgetError(
                f"Loading {name} needs about {need_mb:,.0f} MB, more than MODEL_MEMORY_BUDGET_MB={self.budget_mb:,}. "
                "Raise MODEL_MEMORY_BUDGET_MB (0 = no budget), or lower MODEL_PARALLEL or MODEL_CONTEXT_SIZE "
                "(the KV cache holds MODEL_PARALLEL x MODEL_CONTEXT_SIZE tokens), or use a smaller model.",
                param="MODEL_MEMORY_BUDGET_MB")
        for key in sorted(idle, key=idle.__getitem__):
            if self.held_mb + need_mb <= self.budget_mb:
                break
            held = self._held.get(key)
            if unload(key):
                _log.info("unloaded %s (%.0f MB) to make room for %s within MODEL_MEMORY_BUDGET_MB=%s; the next "
                          "request for it loads it again", held.name if held else key, held.mb if held else 0, name,
                          self.budget_mb)
        if self.held_mb + need_mb > self.budget_mb:
            busy = ", ".join(f"{held.name} ({held.mb:,.0f} MB)" for held in self._held.values())
            raise MemoryBudgetError(
                f"Loading {name} needs about {need_mb:,.0f} MB; with {busy} generating now that passes "
                f"MODEL_MEMORY_BUDGET_MB={self.budget_mb:,}. Retry when they finish, raise the budget, or lower "
                "MODEL_PARALLEL or MODEL_CONTEXT_SIZE.", param="MODEL_MEMORY_BUDGET_MB", retry_after=5)

    def hold(self, key: str, name: str, mb: float) -> None:
        self._held[key] = _Held(name, mb)

    def release(self, key: str) -> None:
        self._held.pop(key, None)
