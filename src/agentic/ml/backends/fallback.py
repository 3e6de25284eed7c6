"""MODEL_FALLBACK: when MODEL_BACKEND cannot answer, the next backend's same tier does.

A request fails over when its backend is unreachable, times out, answers 5xx or keeps answering 429
after its own retries, rejects the key, or is not configured at all (no key, no model file, not
installed). Errors a fallback cannot fix (a bad request, a prompt over the context) are returned as
they are. Failover happens before the first token only: a stream that breaks after text was sent
ends with an error, never with another model's text glued on.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from typing import Any

from ...config import Settings
from ...errors import (
    AgenticError,
    BackendNotInstalledError,
    ConfigError,
    InvalidAPIKeyError,
    ModelLoadError,
    RateLimitError,
    UpstreamError,
)
from ...registry import backend_class
from ..base import BaseModelManager, Delta, GenerationParams, Message, Model, ModelSpec
from ..embeddings import EmbeddingModel
from ..generation import close_iterator
from ..tiers import Tier

__all__ = ["FAILOVER_ERRORS", "FallbackManager", "FallbackModel"]

_log = logging.getLogger(__name__)
# UpstreamError covers connection errors, timeouts and 5xx; ConfigError covers a missing key or model file.
FAILOVER_ERRORS: tuple[type[AgenticError], ...] = (UpstreamError, RateLimitError, InvalidAPIKeyError, ConfigError,
                                                  BackendNotInstalledError, ModelLoadError)
FallbackListener = Callable[[str, str, str, str], None]  # (tier, failed backend, answering backend, error code)


class FallbackModel(Model):
    """A tier served by the first backend of the chain that can answer."""

    concurrent = True  # each backend's own model serializes or batches its calls
    streams_usage = False  # the answering backend may be a remote one

    def __init__(self, owner: FallbackManager, tier: Tier) -> None:
        manager = owner.first_configured()
        super().__init__(manager.specs[tier].name, 0)  # 0: each backend checks its own context
        self.backend = owner.backend  # type: ignore[misc]  # the primary's name; answers carry the real one
        self.parallel = manager.capacity()
        self.owner, self.tier = owner, tier

    def _complete(self, prompt: str, params: GenerationParams) -> Iterator[Delta]:
        return self._serve(lambda model: model._complete(prompt, params))

    def _chat(self, messages: list[Message], params: GenerationParams) -> Iterator[Delta]:
        return self._serve(lambda model: model._chat(list(messages), params))

    def _serve(self, call: Callable[[Model], Iterator[Delta]]) -> Iterator[Delta]:
        failed: list[tuple[str, AgenticError]] = []
        for backend, manager in self.owner.chain:
            if isinstance(manager, AgenticError):  # not configured (said once at start): next backend
                failed.append((backend, manager))
                continue
            try:
                model, _ = manager.for_tier(self.tier)
                deltas = model._serialized(call(model))  # runs to the first delta: errors surface here
            except FAILOVER_ERRORS as exc:
                _log.warning("%s tier on %s failed (%s): %s", self.tier, backend, exc.code or exc.error_type,
                             exc.message.splitlines()[0])
                failed.append((backend, exc))
                continue
            for failed_backend, error in failed:
                if not isinstance(self.owner.manager_of(failed_backend), AgenticError):
                    _log.warning("%s tier answered by %s %s instead of %s", self.tier, backend, model.name,
                                 failed_backend)
                self.owner.notify(self.tier, failed_backend, backend, error.code or error.error_type)
            return _tag(deltas, (model.backend, model.name))
        raise failed[-1][1]


def _tag(deltas: Iterator[Delta], served_by: tuple[str, str]) -> Iterator[Delta]:
    first = True
    try:
        for delta in deltas:
            if first:
                delta.served_by, first = served_by, False
            yield delta
    finally:
        close_iterator(deltas)


class FallbackManager(BaseModelManager):
    """MODEL_BACKEND first, then each MODEL_FALLBACK backend, for both tiers."""

    def __init__(self, settings: Settings, chain: list[tuple[str, BaseModelManager | AgenticError]]) -> None:
        self.chain = chain
        self.backend = chain[0][0]  # type: ignore[misc]  # metrics and /v1/backend name the primary
        self.listeners: list[FallbackListener] = []
        self._tiers: dict[Tier, tuple[Model, AbstractContextManager[Any]]] = {}
        super().__init__(settings)

    @classmethod
    def build(cls, settings: Settings, create: Callable[[Settings], BaseModelManager]) -> FallbackManager:
        """Create each backend's manager; one that is not configured stays in the chain as its error."""
        chain: list[tuple[str, BaseModelManager | AgenticError]] = []
        for backend in [settings.model_backend, *settings.fallback_backends]:
            try:
                chain.append((backend, create(settings.model_copy(update={"model_backend": backend}))))
            except (ConfigError, BackendNotInstalledError, ModelLoadError) as exc:
                _log.warning("MODEL_FALLBACK: %s is not usable (%s); the next backend serves instead", backend,
                             exc.message.splitlines()[0])
                chain.append((backend, exc))
        if all(isinstance(manager, AgenticError) for _, manager in chain):
            error = chain[0][1]
            assert isinstance(error, AgenticError)
            raise error
        return cls(settings, chain)

    @classmethod
    def tier_labels(cls, settings: Settings) -> tuple[str, str]:
        return backend_class(settings.model_backend).tier_labels(settings)

    @classmethod
    def embedding_label(cls, settings: Settings) -> str | None:
        return backend_class(settings.model_backend).embedding_label(settings)

    def embedding_model(self) -> EmbeddingModel:
        """MODEL_BACKEND's embedding model (embeddings do not fail over: another backend's vectors would not
        be comparable with the ones already stored)."""
        return self.first_configured().embedding_model()

    def has_embedder(self) -> bool:
        return self.first_configured().has_embedder()

    def manager_of(self, backend: str) -> BaseModelManager | AgenticError:
        return dict(self.chain)[backend]

    def first_configured(self) -> BaseModelManager:
        return next(manager for _, manager in self.chain if isinstance(manager, BaseModelManager))

    def managers(self) -> list[BaseModelManager]:
        return [manager for _, manager in self.chain if isinstance(manager, BaseModelManager)]

    def _resolve(self, tier: Tier) -> ModelSpec:
        return self.first_configured().specs[tier]

    def _load(self, spec: ModelSpec) -> Model:  # pragma: no cover - for_tier() is overridden
        raise NotImplementedError

    def for_tier(self, tier: Tier) -> tuple[Model, AbstractContextManager[Any]]:
        """The tier's fallback model (one per tier: the chain's tiers may resolve differently)."""
        with self._loading:
            if tier not in self._tiers:
                model = FallbackModel(self, tier)
                self._tiers[tier] = (model, model.new_lock())
            return self._tiers[tier]

    def load_all(self) -> None:
        """Load every configured backend's models (MODEL_PRELOAD): a failover then costs no load time."""
        for manager in self.managers():
            try:
                manager.load_all()
            except FAILOVER_ERRORS as exc:
                _log.warning("MODEL_PRELOAD: %s could not load (%s)", manager.backend, exc.message.splitlines()[0])

    def tier_loaded(self, tier: Tier) -> bool:
        return self.first_configured().tier_loaded(tier)

    def capacity(self) -> int:
        return self.first_configured().capacity()

    def problem(self) -> str | None:
        """None when any backend of the chain can serve; else every backend's problem."""
        problems = []
        for backend, manager in self.chain:
            problem = manager.message if isinstance(manager, AgenticError) else manager.problem()
            if problem is None:
                return None
            problems.append(f"{backend}: {problem}")
        return "; ".join(problems)

    def notify(self, tier: Tier, failed: str, served: str, code: str) -> None:
        for listener in self.listeners:
            listener(tier, failed, served, code)

    def close(self) -> None:
        for manager in self.managers():
            manager.close()
        self._tiers.clear()
