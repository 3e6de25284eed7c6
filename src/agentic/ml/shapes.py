"""llama-cpp-python's result shapes: completion and chat.completion dicts and their stream chunks."""

from __future__ import annotations

import itertools
import time
import uuid
from collections.abc import Generator, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .base import Delta

__all__ = ["ResultShape", "answered_by"]

FINGERPRINT_PREFIX = "agentic-"


def answered_by(result: dict[str, Any]) -> str | None:
    """The backend that answered a result or chunk, from its system_fingerprint (None if it has none)."""
    fingerprint = str(result.get("system_fingerprint") or "")
    return fingerprint.removeprefix(FINGERPRINT_PREFIX) if fingerprint.startswith(FINGERPRINT_PREFIX) else None


@dataclass
class ResultShape:
    """Builds llama-cpp-python's completion / chat.completion dicts and their stream chunks."""

    prefix: str
    object: str
    model: str
    backend: str = ""
    id: str = ""
    created: int = 0

    def __post_init__(self) -> None:
        self.id = f"{self.prefix}-{uuid.uuid4().hex}"
        self.created = int(time.time())

    def _head(self, object_name: str) -> dict[str, Any]:
        # system_fingerprint names the backend that answered (OpenAI: "the backend configuration").
        return {"id": self.id, "object": object_name, "created": self.created, "model": self.model,
                "system_fingerprint": f"{FINGERPRINT_PREFIX}{self.backend}"}

    def _served(self, deltas: Iterator[Delta]) -> Generator[Delta, None, None]:
        """Take the answering backend and model from the first delta (set when a fallback answered)."""
        try:
            first = next(deltas, None)
            if first is None:
                return
            if first.served_by is not None:
                self.backend, self.model = first.served_by
            yield first
            yield from deltas
        finally:
            close = getattr(deltas, "close", None)
            if close is not None:
                close()  # a reader that stops early ends the generation now

    def collect(self, deltas: Iterator[Delta], chat: bool) -> dict[str, Any]:
        parts: list[str] = []
        last = None
        for delta in self._served(deltas):
            parts.append(delta.text)
            last = delta
        text = "".join(parts)
        choice: dict[str, Any] = {"index": 0, "logprobs": None, "finish_reason": last.finish_reason if last else None}
        if chat:
            choice["message"] = {"role": "assistant", "content": text}
        else:
            choice["text"] = text
        return {**self._head(self.object), "choices": [choice], "usage": _usage(last)}

    def stream(self, deltas: Iterator[Delta], chat: bool) -> Iterator[dict[str, Any]]:
        object_name = "chat.completion.chunk" if chat else "text_completion"
        served = self._served(deltas)
        try:
            first = next(served, None)  # names the answering model before the first chunk
            if chat:
                yield {**self._head(object_name), "choices": [{"index": 0, "delta": {"role": "assistant"},
                                                               "logprobs": None, "finish_reason": None}]}
            for delta in itertools.chain([first] if first is not None else [], served):
                if delta.text or delta.finish_reason:
                    body = {"content": delta.text} if delta.text else {}
                    choice: dict[str, Any] = {"index": 0, "logprobs": None, "finish_reason": delta.finish_reason}
                    choice.update({"delta": body} if chat else {"text": delta.text})
                    chunk = {**self._head(object_name), "choices": [choice]}
                    if delta.finish_reason is not None:
                        chunk["usage"] = _usage(delta)
                    yield chunk
        finally:
            served.close()  # a reader that stops early ends the generation now


def _usage(delta: Delta | None) -> dict[str, Any]:
    prompt = delta.prompt_tokens or 0 if delta else 0
    completion = delta.completion_tokens or 0 if delta else 0
    usage: dict[str, Any] = {"prompt_tokens": prompt, "completion_tokens": completion,
                             "total_tokens": prompt + completion}
    if delta is not None and delta.cached_tokens is not None:  # OpenAI's field for prompt-cache hits
        usage["prompt_tokens_details"] = {"cached_tokens": delta.cached_tokens}
    return usage
