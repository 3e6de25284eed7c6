"""What agentic reads from GGUF files itself: the parts of a split model, whether they are whole, and the
memory a model will hold."""

from __future__ import annotations

import ctypes
import logging
import re
from pathlib import Path
from typing import Any

from ..checks import Check

__all__ = ["check_gguf", "gguf_footprint_mb", "gguf_parts"]

_SPLIT = re.compile(r"^(?P<stem>.*)-(?P<part>\d{5})-of-(?P<total>\d{5})\.gguf$")
_MB = 1024 * 1024


def gguf_parts(path: Path) -> list[Path]:
    """Every file a GGUF model needs: its split parts (`name-00001-of-00003.gguf` ...), present or not, or the file."""
    match = _SPLIT.match(path.name)
    if not match:
        return [path]
    total = int(match["total"])
    return [path.with_name(f"{match['stem']}-{index:05d}-of-{total:05d}.gguf") for index in range(1, total + 1)]


def check_gguf(variable: str, path: Path) -> Check:
    """`agentic doctor`'s check of a model file: every split part present and starting with the GGUF magic."""
    parts = gguf_parts(path)
    missing = [part for part in parts if not part.is_file()]
    if missing:
        return Check(f"{variable} file", False, f"missing: {', '.join(str(p) for p in missing)}",
                     f"ls {path.parent}/ and download the missing part(s), or fix {variable}")
    bad = [part for part in parts if _magic(part) != b"GGUF"]
    if bad:
        return Check(f"{variable} file", False, f"{bad[0]} does not start with the GGUF magic bytes",
                     "download the file again (a partial download or an HTML error page looks like this)")
    size = sum(part.stat().st_size for part in parts)
    return Check(f"{variable} file", True, f"{path} ({len(parts)} part(s), {size / 2**20:.0f} MiB)")


def _magic(path: Path) -> bytes:
    with path.open("rb") as file:
        return file.read(4)


def gguf_footprint_mb(llama_cpp: Any, path: Path, kv_tokens: int) -> float:
    """Estimated memory of a GGUF model: weights + f16 KV cache of `kv_tokens` cells + a tenth for buffers.

    Reads the hyper-parameters with a vocab-only load (no tensors, a fraction of a second).
    """
    weights = sum(part.stat().st_size for part in gguf_parts(path) if part.is_file())
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
