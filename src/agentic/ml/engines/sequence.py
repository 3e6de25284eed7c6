"""A sequence of the llama.cpp batching engine (llama_batch.py): its request, progress and samplers."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..generation import SamplingSpec
from .channel import TokenChannel
from .grammar_sampler import Grammar
from .jump_forward import JsonJump
from .runaway import RunawayGuard

__all__ = ["AVOIDED", "Sequence", "in_cells"]


@dataclass
class Sequence:
    """One generation in the batching engine: its prompt, what it has sampled, its sampler and grammar."""

    prompt: list[int]
    limit: int
    sampling: SamplingSpec
    channel: TokenChannel
    seq_id: int = -1
    fed: int = 0  # prompt tokens already decoded
    generated: int = 0
    output: list[int] = field(default_factory=list)  # tokens sampled so far
    cached: int = 0  # leading prompt tokens whose KV cells were reused, not computed
    pending: list[int] = field(default_factory=list)  # the tokens of `output` the next step decodes
    sampler: Any = None
    grammar: Grammar | None = None
    jump: JsonJump | None = None
    avoid: tuple[int, ...] = ()  # tokens never sampled first
    shares: bool = False  # holds cells another sequence holds too (one KV buffer)
    checkpoint: int = 0  # once this many prompt tokens are in its cells, save them to host memory (0: never;
    # until it is placed, the request's `parting`)
    guard: RunawayGuard | None = None  # lowers tokens that would go on repeating (answers under a grammar)

    @property
    def keeps(self) -> int:
        """The likeliest tokens the first step of `StepSampler.make`'s chain keeps (top_tokens.sample_top)."""
        return 1 if self.sampling.temperature == 0 else max(self.sampling.top_k, 0)

    @property
    def extent(self) -> int:
        """Positions the sequence has tokens for: the prompt fed so far, or the prompt and all output (pending or
        not); `len(in_cells(...))` plus the pending tokens, without building the list."""
        return self.fed if self.fed < len(self.prompt) else len(self.prompt) + len(self.output)

    @property
    def avoiding(self) -> bool:
        """Whether the next token is the first, with tokens it must not be."""
        return bool(self.avoid) and not self.output


AVOIDED = -1e9  # the logit of a token a sequence must not sample first


def in_cells(sequence: Sequence) -> list[int]:
    """The tokens whose KV cells the sequence holds: the prompt fed so far, then the output but its pending tokens."""
    if sequence.fed < len(sequence.prompt):
        return sequence.prompt[:sequence.fed]
    return sequence.prompt + sequence.output[:len(sequence.output) - len(sequence.pending)]
