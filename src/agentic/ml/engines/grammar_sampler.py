"""response_format's grammar inside the batching engine: judge the sampled token first, mask only when needed."""

from __future__ import annotations

import ctypes
import time
from collections.abc import Sequence
from typing import Any

from ...errors import InvalidRequestError, SchemaTooComplexError
from .top_tokens import TOKEN_DATA, sample_top

__all__ = ["Grammar"]


class Grammar:
    """response_format's grammar, checked against the sampled token first.

    Masking all 262k candidates of a vocabulary costs ~20-50 ms per token on a CPU, so, as llama.cpp's
    own common sampler does, the sequence samples freely and the grammar judges that one token. When it
    refuses it (about one token in twelve for a small model writing JSON), the grammar masks the likeliest
    tokens (`STEPS`: at most 64, within 8 of the best logit) and the sequence samples among those it
    allows; when it allows none of them, the next steps' (the likeliest 4,096, then 32,768: where the end
    of turn is once the JSON is closed, which the model ranks low, or the exact whitespace the grammar
    wants); only when it allows none of those is the whole vocabulary masked. Greedy decoding gives exactly
    the full-mask answer (every token outside a top set has a lower logit than any inside); sampling differs
    only in never reaching past the top set it stopped at, which the chain's own top-k (40) does anyway.
    Measured on `make run`'s analysis: of ~4,600 tokens ~350 are refused; with the top 64 as the only step
    before the full mask, 131 were masked whole (4.8 s of grammar work in a 50 s run); with these steps, 2
    (1.3 s).
    """

    STEPS = ((8.0, 64), (24.0, 4096), (float("inf"), 32768))  # (logits below the best, most tokens) of each try

    def __init__(self, lib: Any, vocab: Any, text: str, root: str, budget: float) -> None:
        """Compile `text` (in the caller's thread: a slow or failing compile never holds up the batch)."""
        import numpy as np

        self._lib = lib
        self.sampler = lib.llama_sampler_init_grammar(vocab, text.encode(), root.encode())
        if not self.sampler:
            raise InvalidRequestError("llama.cpp could not compile the grammar for response_format.",
                                      param="response_format")
        self.budget, self.spent = budget, 0.0  # seconds of grammar work this sequence may use, and has used
        self.refused = 0  # sampled tokens the grammar refused
        self.full_masks = 0  # times the whole vocabulary was masked
        self._n_vocab = lib.llama_vocab_n_tokens(vocab)
        self._one = (lib.llama_token_data * 1)()
        self._wide = (lib.llama_token_data * max((most for _, most in self.STEPS), default=1))()
        self._wide_view = np.frombuffer(self._wide, dtype=TOKEN_DATA)
        self._all: Any = None  # the whole vocabulary's candidates, allocated on the first full mask

    def sample(self, chain: Any, ctx: Any, index: int, keeps: int) -> int:
        """The next token, sampled by `chain` among those the grammar allows (`keeps`: see top_tokens.sample_top).

        The grammar's own work (judging, masking, advancing) is timed against the budget; sampling the
        token, which a free-text request pays too, is not.
        """
        lib = self._lib
        token = sample_top(lib, chain, ctx, index, self._n_vocab, keeps)
        started = time.perf_counter()
        token = self._judge(token, chain, ctx, index)
        self.spent += time.perf_counter() - started
        if self.spent > self.budget:
            raise SchemaTooComplexError(
                f"Enforcing response_format's schema took {self.spent:.1f} s of grammar work, over "
                f"MODEL_GRAMMAR_TIME_BUDGET={self.budget:g} s: the request was ended so that it does not slow every "
                "other request. Simplify the schema (fewer enum values or alternatives), or raise the budget.")
        return token

    def _judge(self, token: int, chain: Any, ctx: Any, index: int) -> int:
        """`token` if the grammar allows it, else a resampled allowed one; the grammar then accepts it."""
        if not self.allows(token):
            self.refused += 1
            token = self._resample(chain, ctx, index)
        self._lib.llama_sampler_accept(self.sampler, token)
        return token

    def allows(self, token: int) -> bool:
        """Whether the grammar allows `token` next (it accepts nothing)."""
        lib = self._lib
        self._one[0].id, self._one[0].logit, self._one[0].p = token, 0.0, 0.0
        single = lib.llama_token_data_array(self._one, 1, -1, False)
        lib.llama_sampler_apply(self.sampler, ctypes.byref(single))
        return bool(self._one[0].logit != float("-inf"))

    def force(self, tokens: Sequence[int]) -> int:
        """Accept `tokens` in order while the grammar allows them (jump-forward); how many it accepted."""
        for count, token in enumerate(tokens):
            if not self.allows(token):
                return count
            self._lib.llama_sampler_accept(self.sampler, token)
        return len(tokens)

    def _resample(self, chain: Any, ctx: Any, index: int) -> int:
        import numpy as np

        lib, n = self._lib, self._n_vocab
        logits = np.ctypeslib.as_array(lib.llama_get_logits_ith(ctx, index), shape=(n,))
        ceiling = float(logits.max())
        for spread, most in self.STEPS:  # a threshold gives a top set 30x cheaper than a partition of the vocabulary
            ids = np.flatnonzero(logits >= ceiling - spread)
            if len(ids) > most:  # then the likeliest `most` of those: a top set still
                ids = ids[np.argpartition(logits[ids], len(ids) - most)[-most:]]
            token = self._sample_among(chain, self._wide, self._wide_view, ids, logits)
            if token is not None:
                return token
        self.full_masks += 1
        if self._all is None:
            self._all = (lib.llama_token_data * n)()
            self._view = np.frombuffer(self._all, dtype=TOKEN_DATA)
        token = self._sample_among(chain, self._all, self._view, np.arange(n, dtype=np.int32), logits, whole=True)
        assert token is not None
        return token

    def _sample_among(self, chain: Any, buffer: Any, view: Any, ids: Any, logits: Any,
                      whole: bool = False) -> int | None:
        """`chain`'s pick among `ids` that the grammar allows; None when it allows none of them (unless `ids` is
        the `whole` vocabulary: then the chain picks as llama.cpp's own sampler would)."""
        import numpy as np

        lib, size = self._lib, len(ids)
        part = view[:size]
        part["id"], part["logit"], part["p"] = ids, logits[ids], 0.0
        candidates = lib.llama_token_data_array(buffer, size, -1, False)
        lib.llama_sampler_apply(self.sampler, ctypes.byref(candidates))
        if not whole and not np.isfinite(part["logit"]).any():
            return None
        lib.llama_sampler_apply(chain, ctypes.byref(candidates))
        return int(view["id"][candidates.selected])

    def close(self) -> None:
        self._lib.llama_sampler_free(self.sampler)
