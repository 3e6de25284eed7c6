"""The llama.cpp batching engine on the real Gemma GGUF: equality with one-at-a-time, no cross-talk, cancel."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agentic.ml.generation import GenerationRequest, SamplingSpec
from agentic.ml.model_manager import LlamaCppModel, ModelManager
from conftest import assert_greedy_within_a_tie, batched_llama, make_settings

PROMPTS = ["The capital of France is", "Water is made of", "Once upon a time", "The best way to learn is",
           "In 1492, Columbus", "My favourite food is", "The sun rises in the", "A good business idea is"]


@pytest.fixture(scope="module", params=[True, False], ids=["unified", "per-sequence"])
def model(request: pytest.FixtureRequest) -> Iterator[LlamaCppModel]:
    # Raw llama.cpp's reference below runs without flash attention and keeps no other sequence's cells: so does
    # this engine, for the token-for-token comparison (the prefix cache has its own tests). Both KV layouts.
    with batched_llama(model_parallel=8, model_context_size=512, model_n_threads=2, model_prefix_cache=False,
                       model_flash_attention=False, model_kv_unified=request.param) as model:
        yield model


@pytest.fixture(scope="module")
def reference(gemma_path: Path) -> Any:
    from llama_cpp import Llama

    return Llama(model_path=str(gemma_path), n_ctx=1024, n_threads=2, verbose=False, logits_all=True)


def _tokens(model: LlamaCppModel, prompt: str) -> list[int]:
    return model.llama.tokenize(prompt.encode(), add_bos=True, special=True)


def _concurrently(function: Any, items: list[Any]) -> list[Any]:
    results: dict[int, Any] = {}

    def run(index: int, item: Any) -> None:
        results[index] = function(item)

    threads = [threading.Thread(target=run, args=pair) for pair in enumerate(items)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=None)
    return [results[index] for index in range(len(items))]


def test_one_sequence_at_a_time_equals_raw_llama(model: LlamaCppModel, reference: Any) -> None:
    assert model.engine is not None
    for prompt in PROMPTS[:4]:
        tokens = _tokens(model, prompt)
        ours = list(model.engine.generate(GenerationRequest(tokens, 24, SamplingSpec(0.0, 0.95))))
        reference.reset()
        theirs = []
        for token in reference.generate(tokens, temp=0, top_k=40, top_p=0.95, min_p=0.05, repeat_penalty=1.0):
            theirs.append(token)
            if len(theirs) == 24:
                break
        assert ours == theirs, prompt


def test_batched_greedy_differs_from_sequential_only_at_ties(model: LlamaCppModel, reference: Any) -> None:
    assert model.engine is not None
    engine = model.engine
    greedy = SamplingSpec(0.0, 0.95)
    aside = engine.sampled_aside
    outputs = _concurrently(lambda p: list(engine.generate(GenerationRequest(_tokens(model, p), 32, greedy))), PROMPTS)
    assert engine.sampled_aside > aside  # half of a step's sequences are sampled on the helper thread
    for prompt, generated in zip(PROMPTS, outputs, strict=True):
        assert len(generated) == 32
        assert_greedy_within_a_tie(reference, _tokens(model, prompt), generated)


def test_more_streams_than_slots_all_finish_unmixed(model: LlamaCppModel) -> None:
    def stream(index: int) -> tuple[str, dict[str, Any]]:
        chunks = list(model(prompt=f"Item {index}:", max_tokens=10 + index, temperature=0, stream=True))
        return "".join(chunk["choices"][0]["text"] for chunk in chunks), chunks[-1]

    results = _concurrently(stream, list(range(16)))
    for index, (text, last) in enumerate(results):
        assert last["choices"][0]["finish_reason"] in {"stop", "length"}
        if last["choices"][0]["finish_reason"] == "length":
            assert last["usage"]["completion_tokens"] == 10 + index
        assert text


def test_closing_a_stream_frees_its_slot(gemma_path: Path) -> None:
    manager = ModelManager(make_settings(model_7b_path=gemma_path, model_parallel=2, model_context_size=512))
    model, _ = manager.get(heavy=True)
    assert isinstance(model, LlamaCppModel) and model.engine is not None
    engine = model.engine
    story = GenerationRequest(_tokens(model, "Once upon a time"), 400, SamplingSpec(0.8, 0.95))
    long_runs = [engine.generate(story) for _ in range(2)]
    for run in long_runs:
        next(run)
    assert engine.active == 2
    long_runs[0].close()  # the caller hangs up
    quick = model(prompt="Hi", max_tokens=3, temperature=0)  # needs the freed slot
    assert quick["usage"]["completion_tokens"] == 3
    long_runs[1].close()
    deadline = time.monotonic() + 10
    while engine.active and time.monotonic() < deadline:
        time.sleep(0.05)
    assert engine.active == 0
    manager.close()


def test_stop_sequence_ends_the_engine_sequence(model: LlamaCppModel) -> None:
    assert model.engine is not None
    full = model(prompt="The capital of France is", max_tokens=30, temperature=0)["choices"][0]["text"]
    word = full.split()[1]
    cut = model(prompt="The capital of France is", max_tokens=30, temperature=0, stop=word)
    assert cut["choices"][0]["text"] == full[: full.index(word)]
    deadline = time.monotonic() + 10
    while model.engine.active and time.monotonic() < deadline:
        time.sleep(0.05)
    assert model.engine.active == 0


def test_engine_close_is_idempotent_and_refuses_new_work(gemma_path: Path) -> None:
    from agentic.errors import ModelClosedError

    manager = ModelManager(make_settings(model_7b_path=gemma_path, model_parallel=2, model_context_size=256))
    model, _ = manager.get(heavy=True)
    assert isinstance(model, LlamaCppModel) and model.engine is not None
    engine = model.engine
    engine.close()
    engine.close()
    with pytest.raises(ModelClosedError, match=r"manager\.get\(\) again"):
        engine.generate(GenerationRequest([1, 2, 3], 4, SamplingSpec(0.0, 1.0)))
