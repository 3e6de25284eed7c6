"""Batched generation for transformers: requests that arrive together share every forward pass.

A worker thread takes up to `slots` waiting requests, left-pads their prompts into one batch and
decodes them step by step with one KV cache, each row sampling with its own temperature / top_p /
seed. A row ends at its end token, its token limit or when its reader stops (stop sequence, closed
stream); the batch ends when every row has, and the next batch starts with whatever arrived meanwhile.
"""

from __future__ import annotations

import atexit
import inspect
import logging
import random
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ...errors import ModelClosedError
from ..generation import GenerationRequest, SamplingSpec
from .channel import TokenChannel

__all__ = ["TransformersBatcher", "kv_forward"]

_log = logging.getLogger(__name__)
GATHER_SECONDS = 0.05  # waiting this long for company costs one request 50 ms, and gives 8 a shared batch


def kv_forward(model: Any) -> Callable[..., tuple[Any, Any]]:
    """`forward(cache, **inputs) -> (logits of the last position, the new KV cache)` for a transformers model,
    under whichever name its version gives the cache: `cache` (5.x), or `past_key_values` (before; deprecated
    since, and gone in 5.40)."""
    name = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"

    def forward(cache: Any, **inputs: Any) -> tuple[Any, Any]:
        out = model(**inputs, **{name: cache}, use_cache=True, logits_to_keep=1)
        return out.logits, (out[name] if name in out else None)
    return forward


@dataclass
class _Row:
    prompt: list[int]
    limit: int
    sampling: SamplingSpec
    channel: TokenChannel
    constraint: Any = None  # a JsonConstraint for response_format, or None
    generated: int = 0
    done: bool = False

    @property
    def over(self) -> bool:
        """Finished, failed, or no longer read."""
        return self.done or self.channel.cancelled


class TransformersBatcher:
    """Runs up to `slots` generations of one transformers model per batch."""

    def __init__(self, forward: Callable[..., Any], device: Any, pad_token: int, end_tokens: set[int],
                 sample: Callable[[Any, float, float, Any], int], slots: int) -> None:
        import torch

        self._torch = torch
        self.forward, self.device, self.pad_token = forward, device, pad_token
        self.end_tokens, self._sample, self.slots = end_tokens, sample, slots
        self._waiting: deque[_Row] = deque()
        self._wake = threading.Condition()
        self._closed = False
        self._worker = threading.Thread(target=self._loop, name="transformers-batch", daemon=True)
        self._worker.start()
        atexit.register(self.close)  # stop the worker before torch is torn down at exit

    def generate(self, request: GenerationRequest, constraint: Any = None) -> TokenChannel:
        """Token ids of one request as they are sampled; closing the channel ends its row."""
        channel = TokenChannel(lambda: self._worker.is_alive())
        row = _Row(list(request.prompt), request.limit, request.sampling, channel, constraint)
        with self._wake:
            if self._closed:  # no worker would ever answer: refuse rather than wait forever
                raise ModelClosedError()
            self._waiting.append(row)
            self._wake.notify()
        return channel

    def close(self) -> None:
        """Stop the worker once the current batch ends."""
        atexit.unregister(self.close)
        with self._wake:
            self._closed = True
            self._wake.notify()
        self._worker.join()

    def _loop(self) -> None:
        while True:
            with self._wake:
                while not self._waiting and not self._closed:
                    self._wake.wait()
                if self._closed:
                    for row in self._waiting:
                        row.channel.end()
                    return
                deadline = time.monotonic() + GATHER_SECONDS  # callers that start together arrive ms apart
                while len(self._waiting) < self.slots and (left := deadline - time.monotonic()) > 0:
                    self._wake.wait(left)
                rows = [self._waiting.popleft() for _ in range(min(self.slots, len(self._waiting)))]
            try:
                self._run(rows)
            except Exception as exc:  # noqa: BLE001 - every row of the batch gets the error
                _log.exception("transformers batch failed")
                for row in rows:
                    row.channel.end(exc)
            finally:
                for row in rows:
                    row.channel.end()

    def _run(self, rows: list[_Row]) -> None:
        torch = self._torch
        width = max(len(row.prompt) for row in rows)
        ids = torch.tensor([[self.pad_token] * (width - len(r.prompt)) + r.prompt for r in rows], device=self.device)
        mask = torch.tensor([[0] * (width - len(r.prompt)) + [1] * len(r.prompt) for r in rows], device=self.device)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        generators = []
        for row in rows:
            generator = torch.Generator(device=self.device)
            seed = row.sampling.seed
            generator.manual_seed(seed if seed is not None else random.getrandbits(63))
            generators.append(generator)
        past = None
        while not all(row.over for row in rows):
            with torch.inference_mode():
                logits, past = self.forward(past, input_ids=ids, attention_mask=mask, position_ids=positions)
            logits = logits[:, -1].float()
            step = []
            for index, row in enumerate(rows):
                token = self.pad_token
                if not row.over:
                    try:
                        token = self._next(row, logits[index], generators[index])
                    except Exception as exc:  # noqa: BLE001 - this row fails, the batch goes on
                        row.channel.end(exc)
                        row.done, token = True, self.pad_token
                step.append(token)
            ids = torch.tensor([[token] for token in step], device=self.device)
            mask = torch.cat([mask, torch.ones((len(rows), 1), dtype=mask.dtype, device=self.device)], dim=-1)
            positions = positions[:, -1:] + 1

    def _next(self, row: _Row, logits: Any, generator: Any) -> int:
        """Sample one row's next token (within its grammar) and hand it to its reader."""
        if row.constraint is not None:
            row.constraint.mask(logits)
        token = self._sample(logits, row.sampling.temperature, row.sampling.top_p, generator)
        if row.constraint is not None:
            row.constraint.accept(token)
        row.generated += 1
        row.channel.put(token)
        row.done = token in self.end_tokens or row.generated >= row.limit
        return token
