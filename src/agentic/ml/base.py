"""The contract every backend implements: `Model` (one loaded model) and `BaseModelManager` (a backend's tiers).

A backend supplies a `Model` subclass with two methods: `_complete(prompt, params)` and
`_chat(messages, params)`, each yielding `Delta`s. Everything else - argument checks, the
completion / chat.completion dicts (llama-cpp-python's shapes), streaming chunks, usage - lives
here once, so every backend answers in exactly the same shape. A backend's manager subclass says
what the rest of agentic needs to know about it (see `BaseModelManager`).

The types a backend works with are re-exported here, so a backend (a plugin too) imports from this module.
"""

from __future__ import annotations

import logging
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Generator, Iterator, Sequence
from contextlib import AbstractContextManager
from dataclasses import replace
from typing import Any, ClassVar

from pydantic_settings import BaseSettings

from ..checks import Check
from ..config import Settings, load_backend_settings, load_settings
from ..errors import AgenticError, InvalidRequestError, ModelClosedError, SchemaTooComplexError
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
    check_max_tokens,
    check_messages,
    check_text,
    invalid_text,
    invalid_text_message,
)
from .keep_alive import KeepAlive
from .memory_budget import MemoryBudget
from .schema_limits import SchemaLimits
from .shapes import ResultShape
from .tiers import TIERS, Tier, tier_of
from .tools import ToolCallStream, ToolPlan, check_tools, checked_calls

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


class Model(ABC):
    """One loaded model of any backend, called like llama-cpp-python's `Llama`."""

    backend: ClassVar[str] = ""
    # Whether one object may serve several calls at once (a remote API, a batching engine); otherwise
    # calls run one at a time.
    concurrent: bool = False
    # Calls a batching engine generates together; the lock from `manager.get()` admits this many callers.
    parallel: int = 1
    # Whether a streamed answer carries the same usage counts as a whole one (a remote server may omit them
    # from streams); the API server streams non-streaming requests internally only when it does.
    streams_usage: bool = True
    # Whether the backend takes `tools` itself (a remote API); else its `_chat` gives them to the model's chat
    # template (`tools.template_input`) and the grammar of `agentic.ml.tools` keeps its calls valid.
    native_tools: bool = False
    # How large a response_format schema may be (MODEL_SCHEMA_*); backends set theirs from the settings.
    schema_limits: SchemaLimits = SchemaLimits()

    def __init__(self, name: str, context_size: int) -> None:
        self.name = name
        self.context_size = context_size  # 0 when the backend does not say (a remote API)
        self._busy = threading.Lock()
        self._activity = threading.Lock()
        self.active = 0  # generations running now (MODEL_KEEP_ALIVE never unloads a model in use)
        self.closed = False  # retired by its manager: a call raises ModelClosedError instead of touching freed memory
        self.last_used = time.monotonic()

    @abstractmethod
    def _complete(self, prompt: str, params: GenerationParams) -> Iterator[Delta]:
        """Generate a continuation of `prompt`."""

    @abstractmethod
    def _chat(self, messages: list[Message], params: GenerationParams) -> Iterator[Delta]:
        """Generate the assistant's reply to `messages`."""

    def __call__(self, prompt: str, **kwargs: Any) -> Any:
        """`model(prompt=..., max_tokens=..., temperature=...)`, as in the guide."""
        return self.create_completion(prompt, **kwargs)

    def create_completion(
        self,
        prompt: str,
        max_tokens: int | None = 16,
        temperature: float = 0.8,
        top_p: float = 0.95,
        stop: str | Sequence[str] | None = None,
        seed: int | None = None,
        stream: bool = False,
        response_format: dict[str, Any] | None = None,
        **extra: Any,
    ) -> dict[str, Any] | Iterator[dict[str, Any]]:
        """A `text_completion` dict, or an iterator of chunks when `stream=True`."""
        if not isinstance(prompt, str):
            raise InvalidRequestError(f"prompt must be a string, got {type(prompt).__name__}.", param="prompt")
        check_text(prompt, "prompt")
        params = self._params(max_tokens, temperature, top_p, stop, seed, stream, response_format, **extra)
        deltas = self._tracked(lambda: self._complete(prompt, params))
        shape = ResultShape("cmpl", "text_completion", self.name, self.backend)
        return shape.stream(deltas, chat=False) if stream else shape.collect(deltas, chat=False)

    def create_chat_completion(
        self,
        messages: list[Message],
        max_tokens: int | None = None,
        temperature: float = 0.2,
        top_p: float = 0.95,
        stop: str | Sequence[str] | None = None,
        seed: int | None = None,
        stream: bool = False,
        response_format: dict[str, Any] | None = None,
        tools: list[dict[str, Any]] | None = None,
        tool_choice: str | dict[str, Any] | None = None,
        parallel_tool_calls: bool | None = None,
        **extra: Any,
    ) -> dict[str, Any] | Iterator[dict[str, Any]]:
        """A `chat.completion` dict, or an iterator of `chat.completion.chunk` dicts when `stream=True`.

        With `tools`, the model may answer with `message.tool_calls` (finish_reason "tool_calls"), as
        OpenAI's API does; see `agentic.ml.tools`.
        """
        check_messages(messages)
        check_text(messages, "messages")
        params = self._params(max_tokens, temperature, top_p, stop, seed, stream, response_format, **extra)
        plan = self._tool_plan(tools, tool_choice, parallel_tool_calls, params)
        params = replace(params, tools=plan)
        deltas = self._tracked(lambda: self._chat(list(messages), params))
        if plan is not None and plan.calls_allowed:
            deltas = checked_calls(deltas, plan) if self.native_tools else ToolCallStream(plan).run(deltas)
        shape = ResultShape("chatcmpl", "chat.completion", self.name, self.backend)
        return shape.stream(deltas, chat=True) if stream else shape.collect(deltas, chat=True)

    def _tool_plan(self, tools: Any, tool_choice: Any, parallel_tool_calls: Any,
                   params: GenerationParams) -> ToolPlan | None:
        plan = check_tools(tools, tool_choice, parallel_tool_calls)
        if plan is not None:
            check_text(tools, "tools")
            for index, tool in enumerate(plan.tools):  # the schema limits apply to tool schemas too
                where = f"tools[{index}].function.parameters"
                try:
                    self.schema_limits.check(tool["parameters"])
                except SchemaTooComplexError as exc:
                    message = exc.message.replace("response_format's JSON schema", f"{where} (a JSON schema)")
                    raise SchemaTooComplexError(message, param=where) from None
            if plan.calls_allowed and params.response_format is not None:
                raise InvalidRequestError("response_format and tools cannot be combined: a tool call has its own "
                                          "schema. Send one of them.", param="response_format")
        return plan

    def _params(self, *args: Any, **kwargs: Any) -> GenerationParams:
        """GenerationParams.build, then the checks every backend shares: valid text, schema within limits."""
        params = GenerationParams.build(*args, **kwargs)
        check_max_tokens(params.max_tokens, self.context_size)  # the library refuses it as the API does
        check_text(params.stop, "stop")
        check_text(params.response_format, "response_format")
        self.schema_limits.check(params.json_schema)
        return params

    def _tracked(self, start: Callable[[], Iterator[Delta]]) -> Iterator[Delta]:
        """`start()`'s deltas, counted as a use of the model from now until they end (or are closed)."""
        self._use(+1)
        try:
            deltas = self._serialized(start())
        except BaseException:
            self._use(-1)
            raise

        def tracked() -> Iterator[Delta]:
            try:
                yield from deltas  # closing this generator closes `deltas` too (and ends the generation)
            finally:
                self._use(-1)

        return tracked()

    def _use(self, change: int) -> None:
        with self._activity:
            if change > 0 and self.closed:
                raise ModelClosedError()
            self.active += change
            self.last_used = time.monotonic()

    def retire(self) -> bool:
        """Mark the model closed unless a generation runs on it (then False); its manager frees it next.

        Atomic with the start of a generation, so a call either runs on a live model or raises
        ModelClosedError: never on freed memory.
        """
        with self._activity:
            if self.active:
                return False
            self.closed = True
            return True

    def _serialized(self, deltas: Iterator[Delta]) -> Iterator[Delta]:
        """Run one generation at a time on this model, even for callers that skip the lock.

        The first delta is computed before returning, so a bad prompt (too long, say) raises at the
        call, not in the middle of a caller's stream loop.
        """

        def guarded() -> Generator[Delta, None, None]:
            if self.concurrent:
                yield from deltas
                return
            with self._busy:
                yield from deltas

        stream = guarded()
        first = next(stream)

        def primed() -> Iterator[Delta]:
            try:
                yield first
                yield from stream
            finally:
                stream.close()  # a caller that stops early ends the generation (and frees its slot) now

        return primed()

    @property
    def alive(self) -> bool:
        """Whether the model can generate (False: its worker is down)."""
        return True

    @property
    def restarts(self) -> int:
        """Times the model's worker failed and started over."""
        return 0

    def new_lock(self) -> AbstractContextManager[Any]:
        """The lock `manager.get()` hands out: one caller at a time, or `parallel` callers whose calls batch."""
        return threading.BoundedSemaphore(self.parallel) if self.parallel > 1 else threading.RLock()

    def close(self) -> None:  # noqa: B027 - optional hook: remote models hold no memory
        """Free the model's memory; the default has nothing to free."""


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
        loaded = self._models.get(self.specs[tier].key)
        return loaded[0].restarts if loaded else 0

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
