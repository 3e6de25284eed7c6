"""OpenAI wire types for requests; responses are the backends' OpenAI-shaped dicts."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic_core import PydanticCustomError

from ..ml.base import invalid_text, invalid_text_message

__all__ = ["UNSUPPORTED_FIELDS", "ChatCompletionRequest", "ChatMessage", "CompletionRequest", "EmbeddingRequest",
           "RequestBody",
           "StreamOptions", "check_body_text"]


class StreamOptions(BaseModel):
    """`stream_options`: whether the last chunk carries usage."""

    include_usage: bool = False


class ChatMessage(BaseModel):
    """One message of a conversation."""

    model_config = ConfigDict(extra="allow")

    role: Literal["system", "user", "assistant", "tool", "developer"]
    content: str | list[dict[str, Any]] | None = None

    def plain(self) -> dict[str, Any]:
        """The message as the backends take it: text content, `developer` read as `system`, and an assistant's
        `tool_calls` or a tool result's `tool_call_id` kept."""
        content = self.content
        if isinstance(content, list):
            content = "".join(part.get("text", "") for part in content if part.get("type") == "text")
        plain: dict[str, Any] = {"role": "system" if self.role == "developer" else self.role, "content": content or ""}
        extra = self.model_extra or {}
        for key in ("tool_calls", "tool_call_id", "name"):
            if extra.get(key) is not None:
                plain[key] = extra[key]
        return plain


# OpenAI fields we cannot honour yet: refused by name rather than silently ignored. A field sent with
# its neutral value (no tools, no bias, penalty 0) changes nothing and is accepted.
UNSUPPORTED_FIELDS = {
    "functions": "the legacy functions field is not supported: use tools",
    "function_call": "the legacy function_call field is not supported: use tool_choice",
    "logit_bias": "logit_bias is not supported", "logprobs": "logprobs are not returned",
    "top_logprobs": "logprobs are not returned", "presence_penalty": "penalties are not supported",
    "frequency_penalty": "penalties are not supported", "suffix": "suffix is not supported",
}
_NEUTRAL: tuple[Any, ...] = (None, False, 0, "none", "", [], {})


def check_body_text(data: Any) -> None:
    where = invalid_text(data, "body")
    if where is not None:
        raise request_error(where, invalid_text_message(where))


def request_error(param: str, message: str) -> PydanticCustomError:
    """A validation error whose message is ours and whose OpenAI `param` is `param` (see the app's handler)."""
    return PydanticCustomError("agentic_request", message, {"param": param})


class RequestBody(BaseModel):
    """A JSON request body: every string in it (keys too) must be valid Unicode, checked before any field."""

    @model_validator(mode="before")
    @classmethod
    def _valid_text(cls, data: Any) -> Any:
        check_body_text(data)
        return data


class _SamplingRequest(RequestBody):
    """Fields shared by /v1/completions and /v1/chat/completions."""

    model_config = ConfigDict(extra="ignore")

    @model_validator(mode="before")
    @classmethod
    def _honest(cls, data: Any) -> Any:
        """Refuse fields we would otherwise ignore, naming them (RequestBody then checks the text)."""
        for name, reason in UNSUPPORTED_FIELDS.items():
            if isinstance(data, dict) and data.get(name) not in _NEUTRAL:
                raise request_error(name, f"'{name}' was sent, but {reason} by this server. Remove the field.")
        return data

    model: str = Field(description="`heavy`, `light`, or the real name of a tier's model (see /v1/models).")
    max_tokens: int | None = Field(None, ge=1, description="Most tokens to generate; at most the context size.")
    temperature: float = Field(1.0, ge=0, le=2)
    top_p: float = Field(1.0, gt=0, le=1)
    stop: str | list[str] | None = Field(None, description="A stop sequence, or a list of at most 4.")
    seed: int | None = None
    n: int = Field(1, ge=1, le=1, description="Only 1 is supported.")
    stream: bool = False
    stream_options: StreamOptions | None = None
    user: str | None = None

    @field_validator("stop")
    @classmethod
    def _four_stops(cls, value: str | list[str] | None) -> str | list[str] | None:
        """At most 4 stop sequences (OpenAI's rule); a single string may be of any length."""
        if isinstance(value, list) and len(value) > 4:
            raise ValueError(f"at most 4 stop sequences, got {len(value)}")
        return value

    def sampling(self) -> dict[str, Any]:
        """The arguments every backend's model takes."""
        return {"max_tokens": self.max_tokens, "temperature": self.temperature, "top_p": self.top_p,
                "stop": self.stop, "seed": self.seed}


class ChatCompletionRequest(_SamplingRequest):
    """POST /v1/chat/completions."""

    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1, description="Newer name of max_tokens.")
    response_format: dict[str, Any] | None = Field(
        None, description="{'type': 'json_object'} or {'type': 'json_schema', 'json_schema': {'schema': ...}}.")
    tools: list[dict[str, Any]] | None = Field(
        None, description="Functions the model may call: [{'type': 'function', 'function': {'name', 'description', "
        "'parameters'}}].")
    tool_choice: str | dict[str, Any] | None = Field(
        None, description="'auto' (default with tools), 'none', 'required', or {'type': 'function', 'function': "
        "{'name': ...}}.")
    parallel_tool_calls: bool | None = None
    continue_final_message: bool = Field(
        False, description="vLLM's extension: the last message is the assistant's answer so far, and the model "
        "continues it (the reply holds the continuation). llama_cpp with MODEL_PARALLEL > 1 only.")


class CompletionRequest(_SamplingRequest):
    """POST /v1/completions."""

    prompt: str | list[str]
    max_tokens: int | None = Field(16, ge=1, description="Most tokens to generate (OpenAI's default is 16).")
    echo: bool = False


class EmbeddingRequest(RequestBody):
    """POST /v1/embeddings."""

    model_config = ConfigDict(extra="ignore")

    model: str = Field("embedding", description="`embedding`, or the embedding model's name (GET /v1/models).")
    input: Any = Field(description="A string, a list of strings, a list of token ids, or a list of such lists.")
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = Field(None, ge=1, description="Only the model's own size (local models cannot shorten).")
    user: str | None = None
