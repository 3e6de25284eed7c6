"""`agentic doctor`: preflight checks of the configured backend, each with the fix when it fails.

The checks themselves belong to each backend (`BaseModelManager.preflight`); this module runs them for
MODEL_BACKEND and every MODEL_FALLBACK backend.
"""

from __future__ import annotations

from dataclasses import replace

from .checks import Check, gpu_visible
from .config import Settings
from .registry import backend_class

__all__ = ["Check", "gpu_visible", "run_checks"]


def run_checks(settings: Settings) -> list[Check]:
    """Every check for the configured backend, then for each MODEL_FALLBACK backend (names prefixed)."""
    checks = [Check("settings", True, f"MODEL_BACKEND={settings.model_backend}"
                    + (f", MODEL_FALLBACK={settings.model_fallback}" if settings.fallback_backends else "")),
              *backend_class(settings.model_backend).preflight(settings)]
    for backend in settings.fallback_backends:
        fallback = settings.model_copy(update={"model_backend": backend})
        checks += [replace(check, name=f"fallback {backend}: {check.name}")
                   for check in backend_class(backend).preflight(fallback)]
    return checks
