"""OpenAI backend: the OpenAI API or any OpenAI-compatible server, through the official SDK.

Prompt-style calls (`model(prompt=...)`) become one user message, so chat-only models such as
gpt-4 and gpt-4o answer them; the result is returned in completion shape like every backend.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from typing import Any

from ...checks import Check
from ...config import Settings, display_url, load_settings
from ...errors import (
    AgenticError,
    BackendNotInstalledError,
    ContextLengthExceededError,
    InvalidAPIKeyError,
    InvalidRequestError,
    ModelNotFoundError,
    OpenAIKeyMissingError,
    RateLimitError,
    UpstreamConnectionError,
    UpstreamError,
    UpstreamTimeoutError,
)
from ...logs import without_credentials
from ..base import BaseModelManager, Delta, GenerationParams, Message, Model, ModelSpec
from ..embeddings import EmbeddingInput, EmbeddingModel, normalized
from ..tiers import Tier
from ..tools import ToolPlan
from .endpoints import Endpoint, EndpointPool

__all__ = ["OpenAIChatModel", "OpenAIModelManager"]

_log = logging.getLogger(__name__)
OFFICIAL_API = "https://api.openai.com/v1"
DETAIL_CHARS = 300  # upstream error text passed on to clients: enough to act on, no page dumps
INVALID_KEY_HELP = (
    "Invalid API key: {url} rejected OPENAI_API_KEY (HTTP 401). Check:\n"
    "1. Key is correctly copied from https://platform.openai.com/api-keys\n"
    "2. Key hasn't been revoked\n"
    "3. Organization is set correctly (if using org account): OPENAI_ORGANIZATION"
)


def _import_openai() -> Any:
    try:
        import openai
    except ImportError:
        raise BackendNotInstalledError(
            "openai module not found: MODEL_BACKEND=openai needs the OpenAI SDK. Solution: pip install openai"
        ) from None
    return openai


class OpenAIChatModel(Model):
    """One model name on one or more OpenAI-compatible servers."""

    backend = "openai"
    concurrent = True  # the SDK client is thread-safe and the server takes parallel requests
    streams_usage = False  # some servers (llama.cpp's) send no usage in streams
    native_tools = True  # tools, tool calls and tool results go to the server as they are

    def __init__(self, pool: EndpointPool, name: str, settings: Settings) -> None:
        super().__init__(name, 0)
        self.parallel = settings.api_remote_concurrency  # `with lock:` callers send this many requests at once
        self.pool = pool
        self._openai = _import_openai()
        self._secret = settings.openai_api_key.get_secret_value() if settings.openai_api_key else None
        self._url = display_url(settings.openai_base_urls[0]) if settings.openai_base_urls else OFFICIAL_API
        self._schema_mode: str = settings.openai_response_format

    @property
    def client(self) -> Any:
        """The first server's SDK client."""
        return self.pool.endpoints[0].client

    def _complete(self, prompt: str, params: GenerationParams) -> Iterator[Delta]:
        return self._chat([{"role": "user", "content": prompt}], params)

    def _chat(self, messages: list[Message], params: GenerationParams) -> Iterator[Delta]:
        request: dict[str, Any] = {
            "model": self.name, "messages": messages, "temperature": params.temperature, "top_p": params.top_p,
            "stream": params.stream,
        }
        if params.stream:
            request["stream_options"] = {"include_usage": True}
        if params.max_tokens is not None:
            request["max_tokens"] = params.max_tokens
        if params.stop:
            request["stop"] = list(params.stop)
        if params.seed is not None:
            request["seed"] = params.seed
        if params.response_format is not None:
            request["response_format"] = self._response_format(params)
        if params.tools is not None:  # passed through; the answer is sent whole, its calls validated by the caller
            request.update(_tool_fields(params.tools), stream=False)
            request.pop("stream_options", None)
        answer, endpoint = self.first_answer(lambda endpoint: self._create(endpoint, request, params))
        if request["stream"]:
            return self._read(answer, endpoint)
        self.pool.finish(endpoint, failed=False)
        return self._whole(answer)

    def first_answer(self, call: Callable[[Endpoint], Any]) -> tuple[Any, Endpoint]:
        """`call(endpoint)` on the servers in the pool's order until one answers (the endpoint stays started:
        the caller finishes it); a connection error, timeout, 5xx or 429 moves on to the next server."""
        endpoints = self.pool.order()
        for attempt, endpoint in enumerate(endpoints, start=1):
            self.pool.start(endpoint)
            try:
                return call(endpoint), endpoint
            except self._openai.APIError as exc:
                error = self.translate(exc, endpoint.url)
                retryable = isinstance(error, UpstreamError | RateLimitError)
                self.pool.finish(endpoint, failed=retryable)
                if retryable and attempt < len(endpoints):
                    _log.warning("%s: %s; trying %s", endpoint.url, error.code, endpoints[attempt].url)
                    continue
                raise error from None
        raise AssertionError("no endpoint")  # pragma: no cover - the pool is never empty

    def _create(self, endpoint: Endpoint, request: dict[str, Any], params: GenerationParams) -> Any:
        try:
            return endpoint.client.chat.completions.create(**request)
        except self._openai.APIStatusError as exc:
            if not self._refuses_json_schema(exc, request):
                raise
            if self._schema_mode == "auto":  # the first refusal switches; concurrent ones just resend
                _log.warning("%s refused response_format json_schema (%s): sending json_object with the schema "
                             "from now on (OPENAI_RESPONSE_FORMAT=json_object skips this probe)", endpoint.url,
                             exc.status_code)
                self._schema_mode = "json_object"
            request["response_format"] = self._response_format(params)
            return endpoint.client.chat.completions.create(**request)

    def _response_format(self, params: GenerationParams) -> dict[str, Any]:
        """response_format as this server takes it: OpenAI's json_schema, or llama.cpp's json_object + schema."""
        schema = params.json_schema
        if self._schema_mode != "json_object" or not schema:
            return dict(params.response_format or {})
        return {"type": "json_object", "schema": schema}

    def _refuses_json_schema(self, exc: Any, request: dict[str, Any]) -> bool:
        """A server without structured outputs rejects the json_schema type (llama.cpp's says so with a 500)."""
        sent = request.get("response_format") or {}
        return (self._schema_mode != "json_schema" and sent.get("type") == "json_schema"
                and exc.status_code in {400, 422, 500} and "json_schema" in str(getattr(exc, "message", exc)))

    def _whole(self, answer: Any) -> Iterator[Delta]:
        """A non-streamed answer: one delta with the server's own usage counts."""
        choice = answer.choices[0]
        usage = answer.usage
        calls = [{"id": call.id, "type": "function",
                  "function": {"name": call.function.name, "arguments": call.function.arguments}}
                 for call in (getattr(choice.message, "tool_calls", None) or [])]
        yield Delta(choice.message.content or "", choice.finish_reason or "stop",
                    usage.prompt_tokens if usage else 0, usage.completion_tokens if usage else 0,
                    tool_calls=calls or None)

    def _read(self, stream: Any, endpoint: Endpoint) -> Iterator[Delta]:
        """Turn the SDK's chunks into deltas; usage comes from the server, or is counted."""
        finish, usage, pieces, failed = None, None, 0, False
        try:
            with stream:
                for chunk in stream:
                    usage = chunk.usage or usage
                    for choice in chunk.choices[:1]:
                        finish = choice.finish_reason or finish
                        if choice.delta and choice.delta.content:
                            pieces += 1
                            yield Delta(choice.delta.content)
            failed = finish is None
        except (self._openai.APIConnectionError, self._openai.APIResponseValidationError) as exc:
            failed = True
            raise UpstreamConnectionError(f"{endpoint.url} cut the stream off mid-answer ({type(exc).__name__}); "
                                          "the answer is incomplete. Retry the request.") from None
        except self._openai.APIError as exc:
            error = self.translate(exc, endpoint.url)
            failed = isinstance(error, UpstreamError | RateLimitError)
            raise error from None
        finally:
            self.pool.finish(endpoint, failed=failed)  # a reader that stops early is no failure
        if finish is None:
            raise UpstreamConnectionError(f"{endpoint.url} ended the stream without a finish_reason; "
                                          "the answer is incomplete. Retry the request.")
        prompt_tokens = usage.prompt_tokens if usage else 0
        completion_tokens = usage.completion_tokens if usage else pieces
        yield Delta("", finish, prompt_tokens, completion_tokens)

    def translate(self, exc: Exception, url: str | None = None) -> AgenticError:
        """Map the SDK's exception types to ours; the key never appears in the message."""
        openai = self._openai
        url = url or self._url
        status = getattr(exc, "status_code", None)
        detail = self._redact(str(getattr(exc, "message", exc)))
        if isinstance(exc, openai.AuthenticationError):
            return InvalidAPIKeyError(INVALID_KEY_HELP.format(url=url))
        if isinstance(exc, openai.RateLimitError):
            return RateLimitError(f"{url} kept answering 429 (rate limit) after OPENAI_MAX_RETRIES retries "
                                  f"with backoff: {detail}. Wait and retry, or raise your quota.")
        if isinstance(exc, openai.APITimeoutError):
            return UpstreamTimeoutError(f"{url} did not answer within OPENAI_TIMEOUT seconds. "
                                        "Raise OPENAI_TIMEOUT or retry later.")
        if isinstance(exc, openai.APIConnectionError):
            return UpstreamConnectionError(f"Could not reach {url}: {detail}. Check OPENAI_BASE_URL "
                                           "and your network.")
        if isinstance(exc, openai.NotFoundError):
            return ModelNotFoundError(f"{url} has no model {self.name!r}: {detail}. Check "
                                      "OPENAI_HEAVY_MODEL / OPENAI_LIGHT_MODEL.")
        if isinstance(exc, openai.BadRequestError):
            if getattr(exc, "code", None) == "context_length_exceeded":
                return ContextLengthExceededError(f"{self.name}: {detail}")
            return InvalidRequestError(f"{url} refused the request: {detail}")
        return UpstreamError(f"{url} failed (HTTP {status}) after OPENAI_MAX_RETRIES retries: {detail}")

    def _redact(self, text: str) -> str:
        """An upstream's error text as we pass it on: no key, no credentials in URLs, at most DETAIL_CHARS."""
        text = text.replace(self._secret, "***") if self._secret else text
        text = without_credentials(text)
        return text if len(text) <= DETAIL_CHARS else text[:DETAIL_CHARS] + "... (trimmed)"


def _tool_fields(plan: ToolPlan) -> dict[str, Any]:
    """tools, tool_choice and parallel_tool_calls as OpenAI's API takes them."""
    named = plan.choice not in ("auto", "none", "required")
    return {"tools": [{"type": "function", "function": tool} for tool in plan.tools],
            "tool_choice": {"type": "function", "function": {"name": plan.choice}} if named else plan.choice,
            "parallel_tool_calls": plan.parallel}


class OpenAIEmbeddingModel(EmbeddingModel):
    """OPENAI_EMBEDDING_MODEL on the same servers, with the chat models' failover and error translation."""

    backend = "openai"

    def __init__(self, pool: EndpointPool, name: str, settings: Settings) -> None:
        super().__init__(name, 0, None)  # the server checks lengths and dimensions
        self.transport = OpenAIChatModel(pool, name, settings)

    def _embed(self, inputs: list[EmbeddingInput], dimensions: int | None) -> tuple[list[list[float]], int]:
        options: dict[str, Any] = {"model": self.name, "input": inputs, "encoding_format": "float"}
        if dimensions is not None:
            options["dimensions"] = dimensions
        answer, endpoint = self.transport.first_answer(lambda endpoint: endpoint.client.embeddings.create(**options))
        self.transport.pool.finish(endpoint, failed=False)
        ordered = sorted(answer.data, key=lambda item: item.index)
        tokens = answer.usage.prompt_tokens if answer.usage is not None else 0
        return [normalized(item.embedding) for item in ordered], int(tokens)


class OpenAIModelManager(BaseModelManager):
    """OpenAI models: heavy = OPENAI_HEAVY_MODEL, light = OPENAI_LIGHT_MODEL; same interface as ModelManager."""

    backend = "openai"
    remote = True
    key_setting = "openai_api_key"
    tier_settings = ("OPENAI_HEAVY_MODEL", "OPENAI_LIGHT_MODEL")

    @classmethod
    def tier_labels(cls, settings: Settings) -> tuple[str, str]:
        """OPENAI_HEAVY_MODEL and OPENAI_LIGHT_MODEL."""
        return settings.openai_heavy_model, settings.openai_light_model

    @classmethod
    def preflight(cls, settings: Settings) -> list[Check]:
        """Each server answers and accepts the key, and lists both tiers' model names."""
        try:
            manager = cls(settings)
        except AgenticError as exc:
            return [Check("OpenAI client", False, exc.message.splitlines()[0], "see the message")]
        try:
            listed = manager.served_models()  # one models.list per server serves every check below
        finally:
            manager.close()
        found = []
        for url, names in listed.items():
            if isinstance(names, AgenticError):
                fix = names.message.partition("\n")[2] or "check OPENAI_BASE_URL, OPENAI_API_KEY and the network"
                found.append(Check(f"OpenAI server {url}", False, names.message.splitlines()[0], fix))
                continue
            found.append(Check(f"OpenAI server {url}", True, "answers and accepts the key"))
            for variable, name in zip(cls.tier_settings, cls.tier_labels(settings), strict=True):
                listed_here = name in names
                found.append(Check(variable, listed_here, f"{name!r} is {'' if listed_here else 'not '}listed by {url}",
                                   f"pick one of: {', '.join(sorted(names)[:8])}"))
        return found

    def __init__(self, settings: Settings | None = None) -> None:
        settings = settings if settings is not None else load_settings()
        openai = _import_openai()
        if settings.openai_api_key is None and settings.openai_base_url is None:
            raise OpenAIKeyMissingError(
                "OPENAI_API_KEY not provided: MODEL_BACKEND=openai needs a key for api.openai.com. "
                "Solution: add to .env\nOPENAI_API_KEY=sk-your-key-here\n"
                "(or set OPENAI_BASE_URL to an OpenAI-compatible server that needs no key)"
            )
        key = settings.openai_api_key.get_secret_value() if settings.openai_api_key else "not-needed"
        urls = settings.openai_base_urls or [OFFICIAL_API]
        # One server: the SDK retries with backoff. Several: a failure moves on to the next server at once.
        retries = settings.openai_max_retries if len(urls) == 1 else 0
        self.pool = EndpointPool([
            Endpoint(display_url(url), openai.OpenAI(api_key=key, base_url=url, timeout=settings.openai_timeout,
                                                     organization=settings.openai_organization, max_retries=retries))
            for url in urls
        ])
        super().__init__(settings)

    def _resolve(self, tier: Tier) -> ModelSpec:
        name: str = getattr(self.settings, f"openai_{tier}_model")
        return ModelSpec(name, name, f"OPENAI_{tier.upper()}_MODEL")

    def _load(self, spec: ModelSpec) -> Model:
        return OpenAIChatModel(self.pool, spec.name, self.settings)

    @classmethod
    def embedding_label(cls, settings: Settings) -> str:
        """OPENAI_EMBEDDING_MODEL."""
        return settings.openai_embedding_model

    def _load_embedding(self) -> EmbeddingModel:
        return OpenAIEmbeddingModel(self.pool, self.settings.openai_embedding_model, self.settings)

    def capacity(self) -> int:
        """API_REMOTE_CONCURRENCY requests at once per tier: the remote servers schedule them."""
        return self.settings.api_remote_concurrency

    def served_models(self) -> dict[str, set[str] | AgenticError]:
        """Per server: the model names it lists, or why it could not be asked (models.list, 5 s, no retries)."""
        model, _ = self.get(heavy=True)  # a remote model costs nothing to "load"
        assert isinstance(model, OpenAIChatModel)
        listed: dict[str, set[str] | AgenticError] = {}
        for endpoint in self.pool.endpoints:
            try:
                names = endpoint.client.with_options(timeout=5, max_retries=0).models.list()
                listed[endpoint.url] = {entry.id for entry in names}
            except model._openai.APIError as exc:
                listed[endpoint.url] = model.translate(exc, endpoint.url)
        return listed

    def problem(self) -> str | None:
        """None when at least one server answers and accepts the key; else each server's problem."""
        listed = self.served_models()
        errors = [value.message for value in listed.values() if isinstance(value, AgenticError)]
        return "; ".join(errors) if len(errors) == len(listed) else None

    def close(self) -> None:
        """Close the HTTP connection pools."""
        super().close()
        self.pool.close()
