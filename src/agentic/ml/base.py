"""The contract every backend implements: `Model` (one loaded model, in `model.py`) and `BaseModelManager`
(a backend's tiers). A backend supplies a `Model` subclass (`_complete` and `_chat`, each yielding `Delta`s)
and a manager subclass that says what the rest of agentic needs to know about it (see `BaseModelManager`).

The types a backend works with are re-exported here, so a backend (a plugin too) imports from this module.
"""

from __future__ import annotations

import logging
import threading
import time
from abc import ABC, abstractmethod
from contextlib import AbstractContextManager
from typing import Any, ClassVar

from pydantic_settings import BaseSettings

from ..checks import Check
from ..config import Settings, load_backend_settings, load_settings
from ..errors import AgenticError, InvalidRequestError
from .embeddings import EmbeddingModel
from .engines.token_text import StopMatcher, TokenTextStream
from .generation import (
    Delta,
    GenerationParams,
    GenerationRequest,
    Message,
    ModelSpec,
    SamplingSpec,
    check_context,
    check_text,
    invalid_text,
    invalid_text_message,
)
from .keep_alive import KeepAlive
from .memory_budget import MemoryBudget
from .model import Model
from .schema_limits import SchemaLimits
from .tiers import TIERS, Tier, tier_of

__all__ = [
    "BaseModelManager",
    "Delta",
    "GenerationParams",
    "GenerationRequest",
    "Message",
    "Model",
    "ModelSpec",
    "SamplingSpec",
    "StopMatcher",
    "TokenTextStream",
    "check_context",
    "check_text",
    "invalid_text",
    "invalid_text_message",
]

_log = logging.getLogger(__name__)


class BaseModelManager(ABC):
    """Serves the heavy and light tiers of one backend: `model, lock = manager.get(heavy=True)`.

    A backend describes itself here, and the rest of agentic reads it from the class (found through
    `agentic.registry`): its name, its own settings, the secret it needs, whether it is a priced remote
    API, and what `agentic doctor` checks.
    """

    backend: ClassVar[str] = ""  # the MODEL_BACKEND value (the registry's name for it)
    # A priced API that prompts are sent to (cost from the price table; reports say prompts leave the machine);
    # False: runs on this machine, its cost is machine time.
    remote: ClassVar[bool] = False
    # The settings (variable names) that choose the heavy and the light model.
    tier_settings: ClassVar[tuple[str, str]] = ("", "")
    # A plugin's own settings model (pydantic-settings, its own variables, read from the same .env); the
    # built-in backends' settings are agentic's `Settings`, where the guide names them.
    settings_class: ClassVar[type[BaseSettings] | None] = None
    key_setting: ClassVar[str | None] = None  # the secret this backend needs (a field of its settings), SET / NOT SET

    def __init__(self, settings: Settings | None = None) -> None:
        self.settings = settings if settings is not None else load_settings()
        self.specs: dict[Tier, ModelSpec] = {tier: self._resolve(tier) for tier in TIERS}
        self._models: dict[str, tuple[Model, AbstractContextManager[Any]]] = {}
        self._loading = threading.Lock()
        self._budget = MemoryBudget(self.settings.model_memory_budget_mb)
        self._embedder: EmbeddingModel | None = None
        if self.settings.model_preload:
            self.load_all()
        keep_alive = self.settings.model_keep_alive
        self._keep_alive = KeepAlive(self, keep_alive) if keep_alive > 0 else None

    @classmethod
    @abstractmethod
    def tier_labels(cls, settings: Settings) -> tuple[str, str]:
        """What the heavy and light tiers use, for `agentic config`; loads and assembles nothing."""

    @classmethod
    def embedding_label(cls, settings: Settings) -> str | None:
        """The model /v1/embeddings uses, for `agentic config` (None: the backend serves no embeddings)."""
        return None

    def embedding_model(self) -> EmbeddingModel:
        """The backend's embedding model, loaded on first use: `embedding_model().create_embedding(input=...)`."""
        with self._loading:
            if self._embedder is None:
                self._embedder = self._load_embedding()
            return self._embedder

    def has_embedder(self) -> bool:
        """Whether the embedding model is loaded."""
        return self._embedder is not None

    def _load_embedding(self) -> EmbeddingModel:
        raise InvalidRequestError(f"The {self.backend} backend serves no embeddings.", param="model")

    @classmethod
    def own_settings(cls, settings: Settings) -> BaseSettings:
        """The settings object holding this backend's variables: its `settings_class`, else `settings`."""
        if cls.settings_class is None:
            return settings
        return load_backend_settings(cls.settings_class, getattr(settings, "_env_file_path", ".env"))

    @classmethod
    def preflight(cls, settings: Settings) -> list[Check]:
        """`agentic doctor`'s checks of this backend, each with its fix; the default checks its own settings load."""
        if cls.settings_class is None:
            return []
        try:
            cls.own_settings(settings)
        except AgenticError as exc:
            return [Check(f"{cls.backend} settings", False, exc.message, "fix the setting named above")]
        return [Check(f"{cls.backend} settings", True, "valid")]

    @abstractmethod
    def _resolve(self, tier: Tier) -> ModelSpec:
        """Which model a tier uses; raise the guide's error when it cannot exist."""

    @abstractmethod
    def _load(self, spec: ModelSpec) -> Model:
        """Load the model `spec` names."""

    def get(self, heavy: bool = True) -> tuple[Model, AbstractContextManager[Any]]:
        """The guide's call: the heavy (or light) tier's model and the lock to hold while calling it."""
        return self.for_tier(tier_of(heavy))

    def for_tier(self, tier: Tier) -> tuple[Model, AbstractContextManager[Any]]:
        """The tier's model and the lock to hold while calling it, loading it on first use."""
        spec = self.specs[tier]
        with self._loading:
            if spec.key not in self._models:
                need = self.footprint_mb(spec) if self._budget.enabled else None
                if need is not None:  # MODEL_MEMORY_BUDGET_MB: unload idle models first, or refuse
                    self._budget.make_room(spec.name, need, self._idle_since(), self._unload)
                model = self._load(spec)
                model.schema_limits = SchemaLimits.from_settings(self.settings)
                self._models[spec.key] = (model, model.new_lock())
                if need is not None:
                    self._budget.hold(spec.key, model.name, need)
            self._models[spec.key][0].last_used = time.monotonic()
            return self._models[spec.key]

    def footprint_mb(self, spec: ModelSpec) -> float | None:
        """Estimated memory the model will hold once loaded (None: nothing local to count, or unknown)."""
        return None

    def _idle_since(self) -> dict[str, float]:
        """Loaded models not generating now: key -> when last used."""
        idle = {}
        for key, (model, _) in self._models.items():
            with model._activity:
                if model.active == 0:
                    idle[key] = model.last_used
        return idle

    def _unload(self, key: str) -> bool:
        """Close a loaded model and forget it, unless a generation just started on it (the loading lock is held)."""
        model, _ = self._models[key]
        if not model.retire():
            return False
        del self._models[key]
        self._budget.release(key)
        model.close()
        return True

    def unload_idle(self, seconds: float) -> list[str]:
        """Unload every model not used for `seconds` and not generating now (MODEL_KEEP_ALIVE); their keys."""
        now, unloaded = time.monotonic(), []
        with self._loading:
            for key, last_used in self._idle_since().items():
                name = self._models[key][0].name
                if now - last_used >= seconds and self._unload(key):
                    unloaded.append(key)
                    _log.info("unloaded %s: unused for %g s (MODEL_KEEP_ALIVE); the next request loads it again",
                              name, seconds)
        return unloaded

    def load_all(self) -> None:
        """Load both tiers now (MODEL_PRELOAD=true does this at creation)."""
        for tier in TIERS:
            self.for_tier(tier)

    def capacity(self) -> int:
        """Requests one loaded model serves at once (the server queues the rest): MODEL_PARALLEL locally."""
        return self.settings.model_parallel

    def problem(self) -> str | None:
        """Why the backend cannot serve right now (None: it can); for readiness checks."""
        down = [tier for tier, spec in self.specs.items()
                if spec.key in self._models and not self._models[spec.key][0].alive]
        return f"the {' and '.join(down)} model's worker is down" if down else None

    def restarts(self, tier: Tier) -> int:
        """Times the tier's loaded model restarted its worker (0 when not loaded)."""
        return self.engine_count(tier, "restarts")

    def engine_count(self, tier: Tier, counter: str) -> int:
        """One of the tier's loaded model's own counters (`Model.restarts`, `Model.forced_tokens`); 0 when the
        tier is not loaded."""
        loaded = self._models.get(self.specs[tier].key)
        return int(getattr(loaded[0], counter)) if loaded else 0

    def is_loaded(self, heavy: bool = True) -> bool:
        """Whether the heavy (or light) tier's model is in memory."""
        return self.tier_loaded(tier_of(heavy))

    def tier_loaded(self, tier: Tier) -> bool:
        """Whether the tier's model is in memory."""
        return self.specs[tier].key in self._models

    def close(self) -> None:
        """Free every loaded model."""
        if self._keep_alive is not None:
            self._keep_alive.stop()
        with self._loading:
            for key, (model, _) in self._models.items():
                model.closed = True  # closing the manager ends its models, in use or not
                model.close()
                self._budget.release(key)
            self._models.clear()
            if self._embedder is not None:
                self._embedder.close()
                self._embedder = None

    def __enter__(self) -> BaseModelManager:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
