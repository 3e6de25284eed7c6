"""The one list of backends: the built-in ones, then any an installed package adds.

A package adds a backend without editing agentic by declaring an entry point in the `agentic.backends`
group, `name = "package.module:ManagerClass"` (a `BaseModelManager` subclass). Everything else about a
backend (its settings, `agentic doctor` checks, whether it is priced per token by an API, the secret it
needs) is read from that class, so this module only knows names and where their classes are.

This module imports nothing of agentic: settings validation reads the names from here.
"""

from __future__ import annotations

import importlib
from functools import cache
from importlib.metadata import entry_points
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .ml.base import BaseModelManager

__all__ = ["BUILTIN_BACKENDS", "ENTRY_POINT_GROUP", "backend_class", "backend_classes", "backend_names",
           "backend_references", "is_remote", "names_text"]

ENTRY_POINT_GROUP = "agentic.backends"

# name -> "module:class", imported only when used so a backend's own dependencies stay optional
BUILTIN_BACKENDS: dict[str, str] = {
    "llama_cpp": "agentic.ml.backends.llama_cpp:ModelManager",
    "openai": "agentic.ml.backends.openai_api:OpenAIModelManager",
    "transformers_gpu": "agentic.ml.backends.transformers_gpu:GPUModelManager",
}


@cache
def backend_references() -> dict[str, str]:
    """Every backend name -> "module:class": the built-in ones, then installed plugins (a built-in name wins)."""
    references = dict(BUILTIN_BACKENDS)
    for point in entry_points(group=ENTRY_POINT_GROUP):
        references.setdefault(point.name, point.value)
    return references


def backend_names() -> tuple[str, ...]:
    """The values MODEL_BACKEND and MODEL_FALLBACK accept."""
    return tuple(backend_references())


def names_text() -> str:
    """The backend names as a message lists them: 'a', 'b' or 'c'."""
    names = [repr(name) for name in backend_names()]
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} or {names[-1]}"


def backend_class(name: str) -> type[BaseModelManager]:
    """The manager class of backend `name` (KeyError for a name no installed package provides)."""
    module_name, _, class_name = backend_references()[name].partition(":")
    cls: type[BaseModelManager] = getattr(importlib.import_module(module_name), class_name)
    return cls


def backend_classes() -> dict[str, type[BaseModelManager]]:
    """Every installed backend's manager class, by name."""
    return {name: backend_class(name) for name in backend_names()}


def is_remote(name: str) -> bool:
    """Whether the backend sends requests to a priced API (False also for a backend no longer installed)."""
    return name in backend_references() and backend_class(name).remote
