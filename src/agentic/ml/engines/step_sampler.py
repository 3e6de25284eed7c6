"""The sampling half of a batching step (llama_batch.py): every due sequence's next tokens from one decode's logits.

A sequence without a grammar is sampled by its chain among the likeliest tokens only (top_tokens.py); when two or
more are due, half of them are sampled on a helper thread while the engine's worker samples the rest. A sequence
with a grammar is sampled through it, and with jump-forward the text its JSON schema fixes after the sampled token
is written without sampling it (jump_forward.py).
"""

from __future__ import annotations

import ctypes
import logging
import random
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from ..generation import SamplingSpec
from .grammar_sampler import Grammar
from .jump_forward import JsonJump
from .runaway import Breakers
from .sequence import AVOIDED, Sequence
from .top_tokens import sample_top

__all__ = ["StepSampler"]

_log = logging.getLogger(__name__)


class StepSampler:
    """Sampler chains for the sequences of one llama.cpp context, and each step's sampling of them."""

    def __init__(self, llama: Any, ctx: Any, *, piece: Callable[[int], bytes], end: int, room: int,
                 threads: int) -> None:
        """`piece`: a token's bytes; `end`: the end-of-turn token; `room`: the most tokens one sequence may put in
        a step's batch (its share); `threads` > 1 gives sampling a helper thread."""
        import llama_cpp

        self._lib, self._llama, self._ctx = llama_cpp, llama, ctx
        self._vocab = llama._model.vocab
        self._n_vocab = llama_cpp.llama_vocab_n_tokens(self._vocab)
        self._piece, self._end, self._room = piece, end, room
        self._forced_text: dict[str, list[int]] = {}  # forced text -> its tokens
        self._breaks = Breakers(piece)  # whether a token breaks a repeat (runaway.py)
        self._helper = ThreadPoolExecutor(1, "llama-sample") if threads > 1 else None
        self.forced_tokens = 0  # tokens jump-forward wrote without sampling them (the end of turn not counted)
        self.sampled_aside = 0  # tokens the helper sampled
        self.repeats_lowered = 0  # steps of structured answers in which a repeating token was lowered (runaway.py)

    def make(self, spec: SamplingSpec) -> Any:
        """Greedy, or top-k first and then top-p, min-p, temperature, a seeded draw (`Sequence.keeps` relies on it)."""
        lib = self._lib
        chain = lib.llama_sampler_chain_init(lib.llama_sampler_chain_default_params())
        if spec.temperature == 0:
            lib.llama_sampler_chain_add(chain, lib.llama_sampler_init_greedy())
            return chain
        seed = spec.seed if spec.seed is not None else random.getrandbits(31)
        for sampler in (lib.llama_sampler_init_top_k(spec.top_k), lib.llama_sampler_init_top_p(spec.top_p, 1),
                        lib.llama_sampler_init_min_p(spec.min_p, 1), lib.llama_sampler_init_temp(spec.temperature),
                        lib.llama_sampler_init_dist(ctypes.c_uint32(seed).value)):
            lib.llama_sampler_chain_add(chain, sampler)
        return chain

    def close(self) -> None:
        """Stop the helper thread (after the worker has stopped)."""
        if self._helper is not None:
            self._helper.shutdown()

    def presample(self, outputs: list[tuple[Sequence, int]]) -> dict[int, list[int]]:
        """The tokens of the sequences their sampler chain alone picks (no grammar, nothing to avoid), by slot,
        half of them sampled on the helper thread: llama.cpp's sampler reads every logit of the vocabulary (about
        0.8 ms a token for Gemma's 262k, 13% of a 16-sequence step), and between decodes the other core is idle.
        Empty when fewer than two are due; the rest are sampled by `next_tokens`, and so is a half whose sampling
        failed (one sequence at a time, so a failure is that sequence's own error, not the step's)."""
        plain = [(s.seq_id, s.sampler, index, s.keeps) for s, index in outputs if s.grammar is None and not s.avoiding]
        if len(plain) < 2 or self._helper is None:
            return {}
        self._lib.llama_get_logits_ith(self._ctx, plain[0][2])  # the first read reorders llama.cpp's outputs
        half = len(plain) // 2
        theirs = self._helper.submit(self._sample, plain[:half])
        mine = self._unless_failed(lambda: self._sample(plain[half:]), "together", len(plain) - half)
        aside = self._unless_failed(theirs.result, "on the helper thread", half)  # waited for in any case: the
        self.sampled_aside += len(aside)  # helper must be done with the samplers
        return {**mine, **aside}

    @staticmethod
    def _unless_failed(sampled: Callable[[], dict[int, list[int]]], where: str, count: int) -> dict[int, list[int]]:
        """What `sampled` returns, or nothing (they are sampled again one by one) if it raises."""
        try:
            return sampled()
        except Exception:  # noqa: BLE001 - sampled again one by one
            _log.warning("sampling %d sequences %s failed; sampling them one by one", count, where)
            return {}

    def _sample(self, plain: list[tuple[int, Any, int, int]]) -> dict[int, list[int]]:
        lib, ctx, n_vocab = self._lib, self._ctx, self._n_vocab
        return {slot: [sample_top(lib, sampler, ctx, index, n_vocab, keeps)] for slot, sampler, index, keeps in plain}

    def next_tokens(self, sequence: Sequence, index: int) -> list[int]:
        """The token sampled for `sequence` from the logits at `index`, then the text its schema forces after it."""
        if sequence.avoiding:
            logits = self._lib.llama_get_logits_ith(self._ctx, index)
            for token in sequence.avoid:  # far below any other, but not -inf: the grammar may allow nothing else
                logits[token] = AVOIDED
        if sequence.grammar is None:
            return [sample_top(self._lib, sequence.sampler, self._ctx, index, self._n_vocab, sequence.keeps)]
        if sequence.guard is not None and sequence.guard.apply(self._lib.llama_get_logits_ith(self._ctx, index)):
            self.repeats_lowered += 1
        token = sequence.grammar.sample(sequence.sampler, self._ctx, index, sequence.keeps)
        if sequence.jump is None or self._lib.llama_vocab_is_eog(self._vocab, token):
            tokens = [token]
        else:
            tokens = [token, *self._forced(sequence, sequence.jump, sequence.grammar, token)]
        if sequence.guard is not None:
            for each in tokens:
                sequence.guard.feed(each, self._breaks(each))
        return tokens

    def _forced(self, sequence: Sequence, jump: JsonJump, grammar: Grammar, token: int) -> list[int]:
        """The tokens the schema forces after `token`, each accepted by the grammar (which judges them as it
        judges sampled ones); the end of turn once the JSON is closed. Within the sequence's token limit, and its
        share of a batch (every sequence's pending tokens must fit in one: a long key name is not forced)."""
        jump.feed(self._piece(token).decode("utf-8", errors="ignore"))
        text = jump.forced()
        room = min(sequence.limit - sequence.generated, self._room) - 1
        wanted = self._forced_tokens(text) if text else []
        forced = wanted[:grammar.force(wanted[:room])]
        if len(forced) < len(wanted):
            jump.lose()  # out of step with the text: the model writes the rest
        else:
            jump.feed(text)
        self.forced_tokens += len(forced)
        if jump.done and len(forced) < room and grammar.allows(self._end):
            forced.append(self._end)
        return forced

    def _forced_tokens(self, text: str) -> list[int]:
        tokens = self._forced_text.get(text)
        if tokens is None:
            tokens = self._forced_text[text] = self._llama.tokenize(text.encode(), add_bos=False, special=False)
        return tokens
