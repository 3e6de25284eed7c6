"""response_format's grammar inside the batching engine: judge the sampled token first, mask only when needed."""

from __future__ import annotations

import ctypes
import time
from typing import Any

from ...errors import InvalidRequestError, SchemaTooComplexError

__all__ = ["Grammar"]


class Grammar:
    """response_format's grammar, checked against the sampled token first.

    Masking all 262k candidates of a vocabulary costs ~20-50 ms per token on a CPU, so, as llama.cpp's
    own common sampler does, the sequence samples freely and the grammar judges that one token. When it
    refuses it (about one token in seven for a small model writing JSON), the grammar masks the `TOP`
    most likely tokens and the sequence samples among those it allows; only when it allows none of them
    is the whole vocabulary masked. Greedy decoding gives exactly the full-mask answer (every token
    outside the top has a lower logit); sampling differs only in never reaching past the top `TOP`,
    which the chain's own top-k (40) does anyway.
    """

    TOP = 64

    def __init__(self, lib: Any, vocab: Any, text: str, root: str, budget: float) -> None:
        """Compile `text` (in the caller's thread: a slow or failing compile never holds up the batch)."""
        self._lib = lib
        self.sampler = lib.llama_sampler_init_grammar(vocab, text.encode(), root.encode())
        if not self.sampler:
            raise InvalidRequestError("llama.cpp could not compile the grammar for response_format.",
                                      param="response_format")
        self.budget, self.spent = budget, 0.0  # seconds of grammar work this sequence may use, and has used
        self._n_vocab = lib.llama_vocab_n_tokens(vocab)
        self._one = (lib.llama_token_data * 1)()
        self._top = (lib.llama_token_data * self.TOP)()
        self._all: Any = None  # the whole vocabulary's candidates, allocated on the first full mask

    def sample(self, chain: Any, ctx: Any, index: int) -> int:
        """The next token, sampled by `chain` among those the grammar allows.

        The grammar's own work (judging, masking, advancing) is timed against the budget; sampling the
        token, which a free-text request pays too, is not.
        """
        lib = self._lib
        token = lib.llama_sampler_sample(chain, ctx, index)
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
        lib = self._lib
        self._one[0].id, self._one[0].logit, self._one[0].p = token, 0.0, 0.0
        single = lib.llama_token_data_array(self._one, 1, -1, False)
        lib.llama_sampler_apply(self.sampler, ctypes.byref(single))
        if self._one[0].logit == float("-inf"):
            token = self._resample(chain, ctx, index)
        lib.llama_sampler_accept(self.sampler, token)
        return token

    def _resample(self, chain: Any, ctx: Any, index: int) -> int:
        import numpy as np

        lib, n = self._lib, self._n_vocab
        logits = np.ctypeslib.as_array(lib.llama_get_logits_ith(ctx, index), shape=(n,))
        top = np.argpartition(logits, n - self.TOP)[n - self.TOP:]
        for slot, token in enumerate(top):
            self._top[slot].id, self._top[slot].logit, self._top[slot].p = int(token), float(logits[token]), 0.0
        candidates = lib.llama_token_data_array(self._top, self.TOP, -1, False)
        lib.llama_sampler_apply(self.sampler, ctypes.byref(candidates))
        if any(self._top[slot].logit != float("-inf") for slot in range(self.TOP)):
            lib.llama_sampler_apply(chain, ctypes.byref(candidates))
            return int(self._top[candidates.selected].id)
        if self._all is None:
            self._all = (lib.llama_token_data * n)()
            self._view = np.frombuffer(self._all, dtype=np.dtype([("id", "<i4"), ("logit", "<f4"), ("p", "<f4")]))
        self._view["id"] = np.arange(n, dtype=np.int32)
        self._view["logit"] = logits
        self._view["p"] = 0.0
        candidates = lib.llama_token_data_array(self._all, n, -1, False)
        lib.llama_sampler_apply(self.sampler, ctypes.byref(candidates))
        lib.llama_sampler_apply(chain, ctypes.byref(candidates))
        return int(self._view["id"][candidates.selected])

    def close(self) -> None:
        self._lib.llama_sampler_free(self.sampler)
