"""create_model_manager(): the manager for MODEL_BACKEND. `python -m src.agentic.ml.model_factory` shows the config.

The backends are listed in `agentic.registry` (built-in ones, then the `agentic.backends` entry point of
installed packages); adding one is a module with a BaseModelManager subclass, its settings and its tests.
"""

from __future__ import annotations

import sys

from ..config import Settings, effective_values, load_settings
from ..errors import AgenticError
from ..registry import BUILTIN_BACKENDS, backend_class
from .base import BaseModelManager

__all__ = ["BACKEND_REGISTRY", "create_model_manager", "describe_configuration", "manager_class"]

BACKEND_REGISTRY = BUILTIN_BACKENDS  # the built-in backends, name -> "module:class" (plugins: agentic.registry)
manager_class = backend_class  # the manager class of a backend name, built-in or added by a package


def create_model_manager(settings: Settings | None = None) -> BaseModelManager:
    """The manager for MODEL_BACKEND (from `.env` / the environment unless `settings` is given).

    With MODEL_FALLBACK set, a FallbackManager that tries MODEL_BACKEND, then each fallback backend.
    """
    settings = settings if settings is not None else load_settings()
    if settings.fallback_backends:
        from .backends.fallback import FallbackManager

        return FallbackManager.build(settings, lambda each: manager_class(each.model_backend)(each))
    return manager_class(settings.model_backend)(settings)


def describe_configuration(settings: Settings) -> list[str]:
    """The guide's monitoring lines, then every effective setting and where it came from."""
    cls = manager_class(settings.model_backend)
    heavy, light = cls.tier_labels(settings)
    lines = [f"Model Backend: {settings.model_backend}"]
    if cls.key_setting is not None:
        lines.append(f"API Key: {'SET' if getattr(cls.own_settings(settings), cls.key_setting) else 'NOT SET'}")
    lines += [f"Heavy Model: {heavy}", f"Light Model: {light}"]
    embedding = cls.embedding_label(settings)
    lines += [f"Embedding Model: {embedding}"] if embedding is not None else []
    for backend in settings.fallback_backends:
        fallback_heavy, fallback_light = manager_class(backend).tier_labels(settings)
        lines.append(f"Fallback: {backend} (heavy {fallback_heavy}, light {fallback_light})")
    lines += ["", "Effective settings (value  [source]):"]
    rows = effective_values(settings)
    for backend in [settings.model_backend, *settings.fallback_backends]:  # plugins' own settings
        own = manager_class(backend).own_settings(settings)
        rows += effective_values(own) if own is not settings else []
    width = max(len(name) for name, _, _ in rows)
    lines += [f"  {name:<{width}}  {shown}  [{source}]" for name, shown, source in rows]
    return lines


def main() -> int:
    """Print the configuration; a bad setting prints its one-line error instead."""
    try:
        settings = load_settings()
    except AgenticError as exc:
        print(f"Error: {exc}", file=sys.stderr)
        return 2
    print("\n".join(describe_configuration(settings)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
