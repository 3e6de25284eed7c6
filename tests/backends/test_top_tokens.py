"""Sampling among the likeliest tokens picks what llama.cpp's sampler picks among all, on the real Gemma logits."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agentic.ml.engines.top_tokens import sample_top


@pytest.fixture(scope="module")
def llama(gemma_path: Path) -> Iterator[Any]:
    from llama_cpp import Llama

    model = Llama(model_path=str(gemma_path), n_ctx=256, n_threads=2, verbose=False)
    yield model
    model.close()


def _chain(lib: Any, seed: int, top_k: int = 40) -> Any:
    chain = lib.llama_sampler_chain_init(lib.llama_sampler_chain_default_params())
    for sampler in (lib.llama_sampler_init_top_k(top_k), lib.llama_sampler_init_top_p(0.95, 1),
                    lib.llama_sampler_init_min_p(0.05, 1), lib.llama_sampler_init_temp(1.5),
                    lib.llama_sampler_init_dist(seed)):
        lib.llama_sampler_chain_add(chain, sampler)
    return chain


class _Counted:
    """llama_cpp with its whole-vocabulary sampler counted."""

    def __init__(self, lib: Any) -> None:
        self._lib, self.whole = lib, 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._lib, name)

    def llama_sampler_sample(self, chain: Any, ctx: Any, index: int) -> int:
        self.whole += 1
        return int(self._lib.llama_sampler_sample(chain, ctx, index))


@pytest.mark.parametrize("prompt", ["Once upon a time", "My favourite food is", "A good business idea is"])
def test_the_same_tokens_as_llama_cpps_sampler_from_a_few_hundred_candidates(llama: Any, prompt: str) -> None:
    import llama_cpp

    llama.reset()
    llama.eval(llama.tokenize(prompt.encode()))
    ctx, n_vocab, counted = llama._ctx.ctx, llama.n_vocab(), _Counted(llama_cpp)
    ours, theirs = [], []
    for seed in range(40):  # a hot temperature: the draws land all over the top set
        reference, chain = _chain(llama_cpp, seed), _chain(llama_cpp, seed)
        theirs.append(llama_cpp.llama_sampler_sample(reference, ctx, -1))
        ours.append(sample_top(counted, chain, ctx, -1, n_vocab, keeps=40))
        llama_cpp.llama_sampler_free(reference)
        llama_cpp.llama_sampler_free(chain)
    assert ours == theirs
    assert len(set(ours)) > 1
    assert counted.whole == 0  # every token came from the candidates near the best


def test_a_chain_that_needs_every_token_is_sampled_by_llama_cpp(llama: Any) -> None:
    import llama_cpp

    llama.reset()
    llama.eval(llama.tokenize(b"Once upon a time"))
    counted, chain = _Counted(llama_cpp), _chain(llama_cpp, 7, top_k=200_000)
    reference = _chain(llama_cpp, 7, top_k=200_000)
    ctx, n_vocab = llama._ctx.ctx, llama.n_vocab()
    assert sample_top(counted, chain, ctx, -1, n_vocab, keeps=200_000) == llama_cpp.llama_sampler_sample(
        reference, ctx, -1)  # more than are within the margins of the best
    assert sample_top(counted, chain, ctx, -1, n_vocab, keeps=0) >= 0
    assert counted.whole == 2
    llama_cpp.llama_sampler_free(chain)
    llama_cpp.llama_sampler_free(reference)
