"""One KV stream per sequence (MODEL_KV_UNIFIED=false) on the real Gemma GGUF: fillers in the gaps between
running slots and forced tokens fed one a step keep every answer exact; the arithmetic of the fillers."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agentic.ideas.analyzer import TRIAGE_SYSTEM, _example_turns, idea_prompt
from agentic.ideas.schemas import Triage, response_format
from agentic.ml.engines.step_batch import gap_fillers
from agentic.ml.generation import GenerationRequest, SamplingSpec
from agentic.ml.model_manager import LlamaCppModel
from conftest import assert_greedy_within_a_tie, batched_llama


def test_a_free_slot_between_running_ones_gets_a_filler_after_its_held_cells() -> None:
    assert gap_fillers([0, 3], {1: 5}, longest=40) == [(1, 5), (2, 0)]
    assert gap_fillers([3, 0, 1], {}, longest=40) == [(2, 0)]  # any order of slots


def test_no_fillers_without_a_gap_or_when_a_gap_holds_more_than_the_running_sequences() -> None:
    assert gap_fillers([0, 1, 2], {5: 3}, longest=40) == []
    assert gap_fillers([4], {}, longest=40) == []
    assert gap_fillers([0, 2], {1: 41}, longest=40) == []  # every stream would be attended up to 41 cells


@pytest.fixture(scope="module")
def model() -> Iterator[LlamaCppModel]:
    # As test_batching: no flash attention and no cached prefixes, for token-for-token equality with raw llama.cpp.
    with batched_llama(model_parallel=4, model_context_size=512, model_n_threads=2, model_prefix_cache=False,
                       model_flash_attention=False, model_kv_unified=False) as model:
        yield model


@pytest.fixture(scope="module")
def reference(gemma_path: Path) -> Any:
    from llama_cpp import Llama

    return Llama(model_path=str(gemma_path), n_ctx=1024, n_threads=2, verbose=False, logits_all=True)


def test_sequences_with_a_finished_one_between_them_decode_exactly(model: LlamaCppModel, reference: Any) -> None:
    """Four sequences take slots 0-3 in order; the first and third stop early, so slots 1 and 3 run with a free
    slot between them: it gets filler tokens (one ubatch instead of two), which no answer may see."""
    engine = model.engine
    assert engine is not None and not engine.unified
    prompts = [model.llama.tokenize(text.encode(), add_bos=True, special=True)
               for text in ("The capital of France is", "Water is made of", "Once upon a time", "My favourite food is")]
    limits = [3, 40, 3, 40]
    filled = engine._batch.filled
    channels = [engine.generate(GenerationRequest(prompt, limit, SamplingSpec(0.0, 1.0)))
                for prompt, limit in zip(prompts, limits, strict=True)]
    outputs = [list(channel) for channel in channels]
    assert engine._batch.filled > filled
    for prompt, limit, generated in zip(prompts, limits, outputs, strict=True):
        assert len(generated) == limit
        assert_greedy_within_a_tie(reference, prompt, generated)


def test_forced_tokens_are_fed_one_a_step_beside_other_sequences(model: LlamaCppModel) -> None:
    """A json_schema answer running beside a plain one: what the schema forces is fed a token a step (several
    would split the step in two), and the answer is the same valid JSON, ending by itself."""
    engine = model.engine
    assert engine is not None
    messages = [{"role": "system", "content": TRIAGE_SYSTEM}, *_example_turns(Triage),
                {"role": "user", "content": idea_prompt("Dog bakery", "Fresh treats for dogs, delivered weekly.")}]

    def structured() -> str:
        answer = model.create_chat_completion(messages=messages, max_tokens=200, temperature=0,
                                              response_format=response_format(Triage))
        assert answer["choices"][0]["finish_reason"] == "stop"  # type: ignore[index]
        return str(answer["choices"][0]["message"]["content"])  # type: ignore[index]

    alone, dripped = structured(), engine.dripped
    assert dripped == 0  # alone in its steps, a sequence feeds all its forced tokens at once
    beside: list[str] = []
    plain = threading.Thread(target=lambda: model(prompt="Tell me a long story about a lighthouse.",
                                                  max_tokens=160, temperature=0))
    plain.start()
    beside.append(structured())
    plain.join()
    assert engine.dripped > dripped
    assert Triage.model_validate_json(beside[0]) == Triage.model_validate_json(alone)
