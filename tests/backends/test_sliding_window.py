"""The batching engine's KV buffer keeps only the window behind each sequence in sliding-window layers (Gemma 3:
15 of 18 layers, window 512), on the real Gemma GGUF: reuse only where the window is still held, and room made
when sequences sharing cells have all left those cells behind."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agentic.ml.engines.prefix_cache import CHECKPOINT_MIN, HostStore, Placement, PrefixCache, checkpoint_at
from agentic.ml.generation import GenerationRequest, SamplingSpec
from agentic.ml.model_manager import LlamaCppModel
from conftest import assert_greedy_within_a_tie, batched_llama

COUNTING = "Count on: " + ", ".join(str(n) for n in range(1, 145)) + ","  # the model goes on counting: ~640 tokens
ANSWER = 560  # tokens each: past the point where two sequences sharing the prompt fill the window cells


@pytest.fixture(scope="module")
def model() -> Iterator[LlamaCppModel]:
    """Two slots of 2048 tokens in one buffer: its sliding-window layers hold 1,536 cells (2 x 512 + a batch)."""
    with batched_llama(model_parallel=2, model_context_size=2048, model_n_threads=2) as model:
        yield model


@pytest.fixture(scope="module")
def reference(gemma_path: Path) -> Any:
    from llama_cpp import Llama

    return Llama(model_path=str(gemma_path), n_ctx=2048, n_threads=2, verbose=False, logits_all=True,
                 flash_attn=True)


def _prompt(model: LlamaCppModel, text: str) -> list[int]:
    return list(model.llama.tokenize(text.encode(), add_bos=True, special=True))


def test_the_window_is_all_the_engine_keeps_of_sliding_window_layers(model: LlamaCppModel) -> None:
    assert model.engine is not None
    assert model.engine.cells.window == 512
    assert model.engine.cells.reaches(0, 300) and model.engine.cells.reaches(489, 1000)
    assert not model.engine.cells.reaches(1, 300)  # a prefix shorter than the window needs every cell from 0
    assert not model.engine.cells.reaches(490, 1000)  # position 1000 attends back to 489
    assert not model.engine.cells.reaches(-1, 10)  # no cells


def test_two_sequences_sharing_a_prompt_past_the_window_get_cells_of_their_own(model: LlamaCppModel,
                                                                               reference: Any) -> None:
    """The second sequence shares the first's prompt cells (seq_cp). Once both are a window past them, no one
    sequence holds those cells alone, so llama.cpp cannot reuse them and the buffer fills: the engine copies a
    sequence's cells (save, write back) and both answers run to the end, greedy as computed from scratch."""
    engine = model.engine
    assert engine is not None
    prompt = _prompt(model, COUNTING)
    assert 600 < len(prompt) < 700, len(prompt)
    before = engine.unshared
    first = engine.generate(GenerationRequest(prompt, ANSWER, SamplingSpec(0.0, 1.0)))
    answers: list[list[int]] = [[next(first)]]  # running: the second prompt is placed beside it, sharing
    second = engine.generate(GenerationRequest(prompt, ANSWER, SamplingSpec(0.0, 1.0)))
    reader = threading.Thread(target=lambda: answers[0].extend(first))
    reader.start()
    answers.append(list(second))
    reader.join()
    assert second.cached_tokens == len(prompt) - 1
    assert [len(answer) for answer in answers] == [ANSWER, ANSWER]  # neither stopped early nor failed
    assert engine.unshared > before
    assert_greedy_within_a_tie(reference, prompt, answers[1])


def test_a_prefix_whose_window_is_gone_is_computed_again(model: LlamaCppModel, reference: Any) -> None:
    """Saved to host memory once the engine idles, a ~660-token sequence keeps only the window behind its end
    (cells from ~150 on): a prompt sharing its first ~300 tokens cannot go on from those (its next token attends
    back to position 0), so it is computed from scratch, not restored with its first cells missing."""
    engine = model.engine
    assert engine is not None and engine.host is not None
    _forget_everything(engine)  # nothing held or stored from other tests
    long = _prompt(model, COUNTING)
    assert len(list(engine.generate(GenerationRequest(long, 24, SamplingSpec(0.0, 1.0))))) == 24
    _idle_until_stored(engine)
    [(tokens, _, first)] = engine.host.store._entries.values()
    assert tokens[:len(long)] == long
    assert 100 < first < 200
    prompt = long[:300] + _prompt(model, " ... and now backwards: 9, 8, 7,")[1:]
    generation = engine.generate(GenerationRequest(prompt, 24, SamplingSpec(0.0, 1.0)))
    generated = list(generation)
    assert generation.cached_tokens == 0
    assert_greedy_within_a_tie(reference, prompt, generated)


def _idle_until_stored(engine: Any) -> None:
    """Wait until the idle engine has moved every held slot's cells to host memory."""
    with engine._wake:
        for _ in range(600):  # moved one slot each OFFLOAD_AFTER (0.1) seconds idle; a bound, not a timing
            if not engine.cache.holders():
                return
            engine._wake.wait(1.0)
    raise AssertionError("held cells never moved to host memory")


def _forget_everything(engine: Any) -> None:
    with engine._wake:
        engine.cache.forget()
        engine.host.store.clear()
        for slot in range(engine.slots):
            engine.cells.clear(slot)


def test_prompts_that_part_after_a_long_shared_prefix_save_it_where_they_part(model: LlamaCppModel,
                                                                             reference: Any) -> None:
    """Stored in host memory, a finished ~650-token sequence keeps only the window behind its end, so the next
    prompt sharing its first ~640 tokens cannot go on from it: it is computed again, and its cells are saved where
    the two prompts part. The third prompt sharing that prefix goes on from there."""
    engine = model.engine
    assert engine is not None and engine.host is not None
    _forget_everything(engine)
    shared = _prompt(model, COUNTING)
    prompts = [shared + _prompt(model, f" ... {word}")[1:] for word in ("first", "second", "third")]
    before = engine.host.checkpoints
    runs = []
    for prompt in prompts:
        generation = engine.generate(GenerationRequest(prompt, 16, SamplingSpec(0.0, 1.0)))
        runs.append((generation, list(generation)))
        _idle_until_stored(engine)
    assert [generation.cached_tokens for generation, _ in runs[:2]] == [0, 0]
    assert engine.host.checkpoints == before + 1
    parted = len(shared) + 1  # " ..." is the same token in all three
    assert any(tokens == prompts[1][:parted] for tokens, _ in engine.host.store.entries())
    assert runs[2][0].cached_tokens == parted
    assert_greedy_within_a_tie(reference, prompts[2], runs[2][1])


def test_a_chat_saves_its_cells_where_its_last_message_begins(model: LlamaCppModel) -> None:
    """A long system prompt, then a question: the first request's cells are saved where the question begins, so
    the next question after that system prompt computes only itself, though the first sequence kept only the
    window behind its end."""
    engine = model.engine
    assert engine is not None and engine.host is not None
    _forget_everything(engine)
    system = {"role": "system", "content": COUNTING}
    before = engine.host.checkpoints
    usages = []
    for question in ("What comes next?", "Which number was first?"):
        answer = model.create_chat_completion(messages=[system, {"role": "user", "content": question}],
                                              max_tokens=8, temperature=0)
        usages.append(answer["usage"])
        _idle_until_stored(engine)
    assert engine.host.checkpoints == before + 1
    first, second = usages
    assert first["prompt_tokens_details"]["cached_tokens"] == 0
    question = len(model.llama.tokenize(b"Which number was first?", add_bos=False, special=False))
    # all but the question and the template's few tokens after it
    cached = second["prompt_tokens_details"]["cached_tokens"]
    assert second["prompt_tokens"] - question - 8 <= cached < second["prompt_tokens"]


def test_placement_skips_a_longer_prefix_whose_cells_cannot_serve() -> None:
    cache = PrefixCache()
    for slot, tokens in ((0, [1, 2, 3]), (1, [1, 2, 3, 4, 5])):
        cache.place(tokens, free=[slot], running={})
        cache.hold(slot, tokens)
    placement = cache.place([1, 2, 3, 4, 5, 6], free=[0, 1, 2], running={},
                            reusable=lambda slot, length: slot != 1)
    assert (placement.keep, placement.donor) == (3, None) and placement.slot == 0


def test_the_host_store_keeps_and_picks_the_entries_whose_cells_serve() -> None:
    """A window of 3: cells saved from position `first` on serve a sequence going on after `length` tokens when
    first <= length - 2 (or from 0)."""
    store = HostStore(budget=100, reaches=lambda first, length: 0 <= first <= max(0, length - 2))
    store.add([1, 2, 3], "turn 1", first=1)
    store.add([1, 2, 3, 4, 5, 6], "turn 2", first=4)  # cannot serve a prompt going on after [1, 2, 3]: both kept
    assert [blob for _, blob in store.entries()] == ["turn 1", "turn 2"]
    assert store.best([1, 2, 3, 4, 5, 6, 7], 6) == (6, "turn 2", 6)
    assert store.best([1, 2, 3, 4, 9], 4) == (3, "turn 1", 4)  # turn 2's cells start after what this prompt needs
    store.add([1, 2, 3, 4, 5, 6, 7], "turn 2 again", first=1)  # serves both: the two earlier entries go
    assert [blob for _, blob in store.entries()] == ["turn 2 again"]


def test_a_checkpoint_goes_where_prompts_part_first_and_only_when_it_saves_enough() -> None:
    store = HostStore(budget=10_000, reaches=lambda first, length: False)  # no stored cells serve
    prompt = list(range(1000))
    store.add(prompt[:700] + [-1], "another question", first=200)
    assert store.best(prompt, 999) == (0, None, 700)  # the longest prefix stored, though its cells do not serve
    seen = Placement(slot=0, keep=0, shared=700)  # shared: the longest prefix held in place or stored
    assert checkpoint_at(1000, seen) == 700
    assert checkpoint_at(1000, seen, parting=600) == 600  # a chat's last message begins before it
    assert checkpoint_at(1000, Placement(0, keep=620, shared=700), parting=600) == 700  # 600 is reused already
    assert checkpoint_at(1000, Placement(0, keep=700 - CHECKPOINT_MIN + 1, shared=700)) == 0  # too little to save
    assert checkpoint_at(701, Placement(0, keep=0), parting=700) == 700
    assert checkpoint_at(701, Placement(0, keep=0), parting=701) == 0  # the last token is computed
