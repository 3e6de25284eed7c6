"""Embeddings, one interface on every backend: `manager.embedding_model().create_embedding(input=...)`.

The result has llama-cpp-python's (and OpenAI's) shape: `{"object": "list", "data": [{"object": "embedding",
"index": i, "embedding": [...]}], "model", "usage"}`. Vectors are L2-normalized, so a dot product is the cosine.
A backend supplies an `EmbeddingModel` subclass with `_embed(inputs)`; the argument checks, the context
check (an input over the context is an error, never cut), base64 encoding and the shape live here once.
"""

from __future__ import annotations

import base64
import math
import struct
import threading
from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any, ClassVar

from ..errors import ContextLengthExceededError, InvalidRequestError
from .generation import check_text

__all__ = ["MAX_INPUTS", "EmbeddingModel", "EmbeddingInput", "cosine", "normalized"]

MAX_INPUTS = 2048  # inputs per request, as OpenAI allows
EmbeddingInput = str | list[int]  # one text, or one text already tokenized


def normalized(vector: Sequence[float]) -> list[float]:
    """`vector` scaled to length 1 (a zero vector stays zero)."""
    norm = math.sqrt(sum(value * value for value in vector))
    return [value / norm for value in vector] if norm > 0 else list(vector)


def cosine(a: Sequence[float], b: Sequence[float]) -> float:
    """Cosine similarity of two vectors."""
    dot = sum(x * y for x, y in zip(a, b, strict=True))
    norms = math.sqrt(sum(x * x for x in a)) * math.sqrt(sum(y * y for y in b))
    return dot / norms if norms > 0 else 0.0


def _inputs(value: Any) -> list[EmbeddingInput]:
    """`input` as a list of texts or token lists; a clear error naming what is wrong."""
    if isinstance(value, str):
        value = [value]
    elif isinstance(value, list) and value and all(isinstance(item, int) and not isinstance(item, bool)
                                                    for item in value):
        value = [value]  # one tokenized input
    if not isinstance(value, list) or not value:
        raise InvalidRequestError("input must be a non-empty string, a list of strings, a list of token ids or a "
                                  "list of such lists.", param="input")
    if len(value) > MAX_INPUTS:
        raise InvalidRequestError(f"input has {len(value)} items; at most {MAX_INPUTS} per request. Send them in "
                                  "several requests.", param="input")
    for index, item in enumerate(value):
        text_ok = isinstance(item, str) and item != ""
        tokens_ok = (isinstance(item, list) and item and
                     all(isinstance(token, int) and not isinstance(token, bool) and token >= 0 for token in item))
        if not (text_ok or tokens_ok):
            raise InvalidRequestError(f"input[{index}] is not valid: give a non-empty string or a non-empty list of "
                                      "token ids (whole numbers >= 0).", param=f"input[{index}]")
    check_text(value, "input")
    return value


def _encoded(vector: list[float], encoding_format: str) -> list[float] | str:
    if encoding_format == "base64":  # little-endian float32, as OpenAI sends it
        return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode("ascii")
    return vector


class EmbeddingModel(ABC):
    """One loaded embedding model of any backend."""

    backend: ClassVar[str] = ""

    def __init__(self, name: str, context_size: int, dimensions: int | None) -> None:
        self.name = name
        self.context_size = context_size  # 0 when the backend does not say (a remote API)
        self.dimensions = dimensions  # None when the backend does not say
        self._calls = threading.Lock()

    @abstractmethod
    def _embed(self, inputs: list[EmbeddingInput], dimensions: int | None) -> tuple[list[list[float]], int]:
        """Normalized vectors of `inputs` (as `tokenized` returned them), in order, and the tokens they took."""

    def tokenized(self, item: EmbeddingInput) -> EmbeddingInput:
        """`item` as `_embed` takes it: a local backend's token ids (checked here, once); by default as it is."""
        return item

    def create_embedding(self, input: Any, model: str | None = None, encoding_format: str = "float",
                         dimensions: int | None = None, **extra: Any) -> dict[str, Any]:
        """llama-cpp-python's `create_embedding`: every input's vector, in one call (batched by the backend)."""
        inputs = self._checked(input, encoding_format, dimensions, extra)
        vectors, tokens = self._embed(inputs, dimensions)
        return {"object": "list", "model": model or self.name,
                "data": [{"object": "embedding", "index": index, "embedding": _encoded(vector, encoding_format)}
                         for index, vector in enumerate(vectors)],
                "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}

    def embed(self, input: Any) -> list[list[float]]:
        """Just the vectors, as llama-cpp-python's `Llama.embed` returns them for a list."""
        inputs = self._checked(input, "float", None, {})
        return self._embed(inputs, None)[0]

    def _checked(self, input: Any, encoding_format: str, dimensions: int | None,
                 extra: dict[str, Any]) -> list[EmbeddingInput]:
        if extra:
            raise InvalidRequestError(f"Unsupported argument(s): {', '.join(sorted(extra))}. Embeddings take input, "
                                      "model, encoding_format and dimensions.", param=sorted(extra)[0])
        if encoding_format not in ("float", "base64"):
            raise InvalidRequestError(f"encoding_format={encoding_format!r} is not valid: use 'float' or 'base64'.",
                                      param="encoding_format")
        if dimensions is not None and (not isinstance(dimensions, int) or dimensions < 1 or (
                self.dimensions is not None and dimensions != self.dimensions)):
            raise InvalidRequestError(
                f"dimensions={dimensions!r} is not available: {self.name} gives vectors of {self.dimensions} "
                "dimensions and cannot shorten them. Leave dimensions unset.", param="dimensions")
        inputs = [self.tokenized(item) for item in _inputs(input)]
        for index, item in enumerate(inputs):
            if self.context_size and isinstance(item, list) and len(item) > self.context_size:
                raise ContextLengthExceededError(
                    f"input[{index}] is {len(item)} tokens, but {self.name} embeds at most {self.context_size} "
                    "tokens at once. Split the text (it is never cut silently), or raise MODEL_CONTEXT_SIZE.",
                    param=f"input[{index}]")
        return inputs

    def close(self) -> None:  # noqa: B027 - optional hook: remote models hold no memory
        """Free the model's memory."""
