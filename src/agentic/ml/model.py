"""`Model`: one loaded model of any backend, answering in llama-cpp-python's shapes.

A backend supplies a `Model` subclass with two methods: `_complete(prompt, params)` and
`_chat(messages, params)`, each yielding `Delta`s. Everything else - argument checks, the
completion / chat.completion dicts, streaming chunks, usage, stops, tools, schema limits - lives
here once, so every backend answers in exactly the same shape.
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

from ..errors import InvalidRequestError, ModelClosedError, SchemaTooComplexError
from .generation import (
    Delta,
    GenerationParams,
    Message,
    check_max_tokens,
    check_messages,
    check_text,
)
from .schema_limits import SchemaLimits
from .shapes import ResultShape
from .tools import ToolCallStream, ToolPlan, check_tools, checked_calls

__all__ = ["Model"]

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
        continue_final_message: bool = False,
        **extra: Any,
    ) -> dict[str, Any] | Iterator[dict[str, Any]]:
        """A `chat.completion` dict, or an iterator of `chat.completion.chunk` dicts when `stream=True`.

        With `tools`, the model may answer with `message.tool_calls` (finish_reason "tool_calls"), as
        OpenAI's API does; see `agentic.ml.tools`. With `continue_final_message` (as in vLLM), the last message
        is the assistant's answer so far and the model continues it: the reply holds the continuation only.
        """
        check_messages(messages)
        check_text(messages, "messages")
        params = self._params(max_tokens, temperature, top_p, stop, seed, stream, response_format, **extra)
        plan = self._tool_plan(tools, tool_choice, parallel_tool_calls, params)
        params = replace(params, tools=plan, continue_final=self._check_continue(continue_final_message, messages))
        deltas = self._tracked(lambda: self._chat(list(messages), params))
        if plan is not None and plan.calls_allowed:
            deltas = checked_calls(deltas, plan) if self.native_tools else ToolCallStream(plan).run(deltas)
        shape = ResultShape("chatcmpl", "chat.completion", self.name, self.backend)
        return shape.stream(deltas, chat=True) if stream else shape.collect(deltas, chat=True)

    @property
    def continues_messages(self) -> bool:
        """Whether `continue_final_message` works here (a backend that continues a final assistant message)."""
        return False

    def _check_continue(self, wanted: Any, messages: list[Message]) -> bool:
        """`continue_final_message`, checked: a final assistant message with text, on a backend that continues it."""
        if not isinstance(wanted, bool):
            raise InvalidRequestError(f"continue_final_message={wanted!r} is not valid: use true or false.",
                                      param="continue_final_message")
        if not wanted:
            return False
        last = messages[-1] if messages else {}
        if last.get("role") != "assistant" or not isinstance(last.get("content"), str) or not last["content"]:
            raise InvalidRequestError("continue_final_message needs the last message to be the assistant's answer "
                                      "so far (role 'assistant', text content).", param="continue_final_message")
        if not self.continues_messages:
            raise InvalidRequestError(
                f"continue_final_message is not supported by {self.backend} ({self.name}); it works on llama_cpp "
                "with MODEL_PARALLEL > 1. Send the messages without it.", param="continue_final_message")
        return True

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

    @property
    def forced_tokens(self) -> int:
        """Tokens a JSON schema forced that the model wrote without sampling them (jump-forward)."""
        return 0

    def new_lock(self) -> AbstractContextManager[Any]:
        """The lock `manager.get()` hands out: one caller at a time, or `parallel` callers whose calls batch."""
        return threading.BoundedSemaphore(self.parallel) if self.parallel > 1 else threading.RLock()

    def close(self) -> None:  # noqa: B027 - optional hook: remote models hold no memory
        """Free the model's memory; the default has nothing to free."""
