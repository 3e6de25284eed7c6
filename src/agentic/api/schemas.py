"""OpenAI wire types for requests; responses are the backends' OpenAI-shaped dicts."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

__all__ = ["ChatCompletionRequest", "ChatMessage", "CompletionRequest", "IdeaRequest", "StreamOptions"]


class StreamOptions(BaseModel):
    """`stream_options`: whether the last chunk carries usage."""

    include_usage: bool = False


class ChatMessage(BaseModel):
    """One message of a conversation."""

    model_config = ConfigDict(extra="allow")

    role: Literal["system", "user", "assistant", "tool", "developer"]
    content: str | list[dict[str, Any]] | None = None

    def plain(self) -> dict[str, Any]:
        """The message as the backends take it: text content, `developer` read as `system`."""
        content = self.content
        if isinstance(content, list):
            content = "".join(part.get("text", "") for part in content if part.get("type") == "text")
        return {"role": "system" if self.role == "developer" else self.role, "content": content or ""}


class _SamplingRequest(BaseModel):
    """Fields shared by /v1/completions and /v1/chat/completions."""

    model_config = ConfigDict(extra="ignore")

    model: str = Field(description="`heavy`, `light`, or the real name of a tier's model (see /v1/models).")
    max_tokens: int | None = Field(None, ge=1, description="Most tokens to generate; at most the context size.")
    temperature: float = Field(1.0, ge=0, le=2)
    top_p: float = Field(1.0, gt=0, le=1)
    stop: str | list[str] | None = Field(None, max_length=4)
    seed: int | None = None
    n: int = Field(1, ge=1, le=1, description="Only 1 is supported.")
    stream: bool = False
    stream_options: StreamOptions | None = None
    user: str | None = None

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


class CompletionRequest(_SamplingRequest):
    """POST /v1/completions."""

    prompt: str | list[str]
    max_tokens: int | None = Field(16, ge=1, description="Most tokens to generate (OpenAI's default is 16).")
    echo: bool = False


class IdeaRequest(BaseModel):
    """POST /v1/ideas/analyze: one business idea."""

    model_config = ConfigDict(extra="forbid")

    title: str = Field(min_length=1, max_length=200)
    description: str = Field(min_length=1, max_length=4000)
    retries: int = Field(2, ge=0, le=5, description="Extra attempts when an answer does not match its schema.")
