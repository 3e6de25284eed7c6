"""Embeddings with transformers: the base model's last hidden state, mean-pooled over each input's tokens.

One call's inputs go through the model together, padded into batches of up to BATCH_INPUTS; calls from
several threads take turns (the llama.cpp embedder also batches across concurrent callers; this one
does not).
"""

from __future__ import annotations

import threading
from typing import Any, cast

from ..embeddings import EmbeddingInput, EmbeddingModel, normalized

__all__ = ["BATCH_INPUTS", "TransformersEmbeddingModel"]

BATCH_INPUTS = 32


class TransformersEmbeddingModel(EmbeddingModel):
    """Mean-pooled, normalized embeddings of a transformers model (AutoModel, no LM head)."""

    backend = "transformers_gpu"

    def __init__(self, name: str, model: Any, tokenizer: Any, context_size: int) -> None:
        import torch

        self._torch = torch
        self.model, self.tokenizer = model, tokenizer
        self.device = next(model.parameters()).device
        self._pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        self._turn = threading.Lock()
        super().__init__(name, context_size, int(model.config.hidden_size))

    def tokenized(self, item: EmbeddingInput) -> list[int]:
        return list(item) if isinstance(item, list) else list(self.tokenizer(item).input_ids)

    def _embed(self, inputs: list[EmbeddingInput], dimensions: int | None) -> tuple[list[list[float]], int]:
        tokens = cast(list[list[int]], inputs)  # `tokenized` made every input token ids
        vectors: list[list[float]] = []
        with self._turn:
            for start in range(0, len(tokens), BATCH_INPUTS):
                vectors += self._batch(tokens[start:start + BATCH_INPUTS])
        return vectors, sum(len(each) for each in tokens)

    def _batch(self, tokens: list[list[int]]) -> list[list[float]]:
        torch = self._torch
        width = max(len(each) for each in tokens)
        ids = torch.tensor([each + [self._pad] * (width - len(each)) for each in tokens], device=self.device)
        mask = torch.tensor([[1] * len(each) + [0] * (width - len(each)) for each in tokens], device=self.device)
        with torch.inference_mode():
            hidden = self.model(input_ids=ids, attention_mask=mask).last_hidden_state.float()
        weights = mask.unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1)
        return [normalized(row) for row in pooled.tolist()]
