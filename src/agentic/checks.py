"""What `agentic doctor` reports: one `Check` per line. Backends write their own (`preflight`)."""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

__all__ = ["Check", "available_memory_bytes", "gpu_visible"]


@dataclass(frozen=True)
class Check:
    """One line of the report: what was checked, whether it passed, what to do if not."""

    name: str
    ok: bool
    detail: str
    fix: str = ""


def gpu_visible() -> bool:
    """Whether this machine shows an NVIDIA GPU (driver device node or nvidia-smi)."""
    return Path("/dev/nvidia0").exists() or shutil.which("nvidia-smi") is not None


def available_memory_bytes() -> int | None:
    """MemAvailable of /proc/meminfo (None where there is none)."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None
