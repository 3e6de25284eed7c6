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

import ctypes
import logging
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import MemoryBudgetError

__all__ = ["MemoryBudget", "gguf_footprint_mb", "gguf_parts"]

_log = logging.getLogger(__name__)
_MB = 1024 * 1024


def gguf_parts(path: Path) -> list[Path]:
    """Every file of a GGUF model: the split parts (`name-00001-of-00003.gguf` ...), or the one file."""
    stem, marker, count = path.stem.rpartition("-of-")
    if marker and count.isdigit() and stem[-5:].isdigit():
        parts = [path.with_name(f"{stem[:-5]}{index:05d}-of-{count}.gguf") for index in range(1, int(count) + 1)]
        return [part for part in parts if part.is_file()]
    return [path]


def gguf_footprint_mb(llama_cpp: Any, path: Path, kv_tokens: int) -> float:
    """Estimated memory of a GGUF model: weights + f16 KV cache of `kv_tokens` cells + a tenth for buffers.

    Reads the hyper-parameters with a vocab-only load (no tensors, a fraction of a second).
    """
    weights = sum(part.stat().st_size for part in gguf_parts(path))
    quiet = logging.getLogger("llama-cpp-python")  # llama-cpp-python prints llama.cpp's log below this level
    if quiet.level == logging.NOTSET:
        quiet.setLevel(logging.ERROR)  # as Llama(verbose=False) does
    params = llama_cpp.llama_model_default_params()
    params.vocab_only = True
    model = llama_cpp.llama_model_load_from_file(str(path).encode(), params)
    if not model:
        return weights * 1.1 / _MB  # unreadable header: the load itself reports it properly
    try:  # the header only: a vocab-only model has no per-layer hyper-parameters to ask for
        meta = _Header(llama_cpp, model)
        layers, heads = meta.integer("block_count"), meta.integer("attention.head_count")
        heads_kv = meta.integer("attention.head_count_kv") or heads
        head = meta.integer("embedding_length") // max(heads, 1)
        key, value = meta.integer("attention.key_length") or head, meta.integer("attention.value_length") or head
    finally:
        llama_cpp.llama_model_free(model)
    kv = layers * kv_tokens * heads_kv * (key + value) * 2
    return (weights * 1.1 + kv) / _MB


class _Header:
    """Integers of a GGUF header, under `<architecture>.`; per-layer arrays give their largest value."""

    def __init__(self, llama_cpp: Any, model: Any) -> None:
        self._lib, self._model = llama_cpp, model
        self._architecture = self._text("general.architecture") or ""

    def _text(self, key: str) -> str | None:
        buffer = ctypes.create_string_buffer(4096)
        size = self._lib.llama_model_meta_val_str(self._model, key.encode(), buffer, len(buffer))
        return buffer.value.decode(errors="replace") if size >= 0 else None

    def integer(self, suffix: str) -> int:
        """The value, or 0 when absent."""
        numbers = [int(part) for part in re.findall(r"\d+", self._text(f"{self._architecture}.{suffix}") or "")]
        return max(numbers, default=0)


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
