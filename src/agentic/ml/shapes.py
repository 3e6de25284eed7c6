"""llama-cpp-python's result shapes: completion and chat.completion dicts and their stream chunks."""

from __future__ import annotations

import itertools
import time
import uuid
from collections.abc import Generator, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from .generation import Delta, close_iterator

__all__ = ["ResultDict", "ResultShape", "answered_by", "join_chunks"]

FINGERPRINT_PREFIX = "agentic-"


class ResultDict(dict[str, Any]):
    """A completion, chat.completion or chunk dict (llama-cpp-python's shape) that also carries, as a typed
    attribute, the backend that answered: a fallback's when one did."""

    backend: str = ""


def answered_by(result: dict[str, Any]) -> str | None:
    """The backend that answered a result or chunk (None for a dict agentic did not shape)."""
    return result.backend or None if isinstance(result, ResultDict) else None


def join_chunks(chunks: Iterable[dict[str, Any]]) -> ResultDict:
    """The whole completion / chat.completion that a stream's chunks spell out: the one way chunks become an answer
    (the library's non-streamed calls and the API server's both use it)."""
    head: dict[str, Any] = {}
    text: list[str] = []
    calls: dict[int, dict[str, Any]] = {}
    finish, usage, chat, backend = None, None, False, ""
    for chunk in chunks:
        head, backend = head or chunk, backend or (answered_by(chunk) or "")
        choice = chunk["choices"][0] if chunk["choices"] else {}
        chat = chat or "delta" in choice
        text.append((choice.get("delta", {}).get("content") if chat else choice.get("text")) or "")
        for piece in choice.get("delta", {}).get("tool_calls") or []:  # id and name first, then argument pieces
            call = calls.setdefault(piece["index"], {"id": piece.get("id"), "type": "function",
                                                     "function": {"name": None, "arguments": ""}})
            function = piece.get("function") or {}
            call["function"]["name"] = function.get("name") or call["function"]["name"]
            call["function"]["arguments"] += function.get("arguments") or ""
        finish, usage = choice.get("finish_reason") or finish, chunk.get("usage") or usage
    whole: dict[str, Any] = {"index": 0, "logprobs": None, "finish_reason": finish}
    if chat:  # with tool calls and no text, content is null, as OpenAI sends it
        whole["message"] = {"role": "assistant", "content": "".join(text) or (None if calls else "")}
        if calls:
            whole["message"]["tool_calls"] = [calls[index] for index in sorted(calls)]
    else:
        whole["text"] = "".join(text)
    result = ResultDict({**head, "object": "chat.completion" if chat else "text_completion", "choices": [whole],
                         "usage": usage or _usage(None)})
    result.backend = backend
    return result


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

    def _chunk(self, object_name: str, choices: list[dict[str, Any]]) -> ResultDict:
        # system_fingerprint names the backend configuration, as OpenAI's does; code reads `.backend`.
        chunk = ResultDict(id=self.id, object=object_name, created=self.created, model=self.model,
                           system_fingerprint=f"{FINGERPRINT_PREFIX}{self.backend}", choices=choices)
        chunk.backend = self.backend
        return chunk

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
            close_iterator(deltas)  # a reader that stops early ends the generation now

    def _call_chunks(self, object_name: str, calls: list[dict[str, Any]]) -> Iterator[ResultDict]:
        """Tool calls as OpenAI streams them: per call, its index, id, type and name, then its arguments."""
        for index, call in enumerate(calls):
            function = call["function"]
            head = {"index": index, "id": call["id"], "type": "function",
                    "function": {"name": function["name"], "arguments": ""}}
            for piece in (head, {"index": index, "function": {"arguments": function["arguments"]}}):
                yield self._chunk(object_name, [{"index": 0, "delta": {"tool_calls": [piece]}, "logprobs": None,
                                                 "finish_reason": None}])

    def collect(self, deltas: Iterator[Delta], chat: bool) -> ResultDict:
        """The whole answer: the stream's chunks, joined."""
        return join_chunks(self.stream(deltas, chat))

    def stream(self, deltas: Iterator[Delta], chat: bool) -> Iterator[ResultDict]:
        object_name = "chat.completion.chunk" if chat else "text_completion"
        served = self._served(deltas)
        try:
            first = next(served, None)  # names the answering model before the first chunk
            if chat:
                yield self._chunk(object_name, [{"index": 0, "delta": {"role": "assistant"}, "logprobs": None,
                                                 "finish_reason": None}])
            for delta in itertools.chain([first] if first is not None else [], served):
                if delta.tool_calls:
                    yield from self._call_chunks(object_name, delta.tool_calls)
                if delta.text or delta.finish_reason:
                    body = {"content": delta.text} if delta.text else {}
                    choice: dict[str, Any] = {"index": 0, "logprobs": None, "finish_reason": delta.finish_reason}
                    choice.update({"delta": body} if chat else {"text": delta.text})
                    chunk = self._chunk(object_name, [choice])
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
