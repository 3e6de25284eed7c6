"""Prompt prefix reuse in the llama.cpp batching engine, on the real Gemma GGUF."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agentic.ml.engines.prefix_cache import HostStore, PrefixCache, common_prefix
from agentic.ml.generation import GenerationRequest, SamplingSpec
from agentic.ml.model_manager import LlamaCppModel, ModelManager
from conftest import assert_greedy_within_a_tie, make_settings

INSTRUCTIONS = "You are a careful analyst of business ideas. Judge the market, the competition and the risks. " * 12


def _manager(**overrides: Any) -> ModelManager:
    return ModelManager(make_settings(model_parallel=4, model_context_size=1024, model_n_threads=2, **overrides))


@pytest.fixture(scope="module", params=[True, False], ids=["unified", "per-sequence"])
def cached(request: pytest.FixtureRequest) -> Iterator[LlamaCppModel]:
    """Both KV layouts: one buffer (a prefix from another slot is shared) and one stream per sequence (copied)."""
    manager = _manager(model_kv_unified=request.param)
    model, _ = manager.get(heavy=True)
    assert isinstance(model, LlamaCppModel)
    yield model
    manager.close()


@pytest.fixture(scope="module")
def reference(gemma_path: Path) -> Any:
    from llama_cpp import Llama

    return Llama(model_path=str(gemma_path), n_ctx=1024, n_threads=2, verbose=False, logits_all=True,
                 flash_attn=True)


def _complete(model: LlamaCppModel, idea: str, max_tokens: int = 24) -> dict[str, Any]:
    result = model.create_completion(f"{INSTRUCTIONS}\nIdea: {idea}\nVerdict:", max_tokens=max_tokens, temperature=0)
    assert isinstance(result, dict)
    return result


def _greedy(model: LlamaCppModel, idea: str) -> tuple[list[int], list[int], int]:
    """(prompt ids, 24 greedy ids, prompt tokens reused) straight from the engine."""
    assert model.engine is not None
    prompt = model.llama.tokenize(f"{INSTRUCTIONS}\nIdea: {idea}\nVerdict:".encode(), add_bos=True, special=True)
    generation = model.engine.generate(GenerationRequest(prompt, 24, SamplingSpec(0.0, 1.0)))
    return prompt, list(generation), generation.cached_tokens


def test_a_repeated_prompt_reuses_all_but_its_last_token_and_stays_greedy(cached: LlamaCppModel,
                                                                          reference: Any) -> None:
    prompt, first, _ = _greedy(cached, "a dog bakery")
    _, again, reused = _greedy(cached, "a dog bakery")
    assert reused == len(prompt) - 1
    assert_greedy_within_a_tie(reference, prompt, first)
    assert_greedy_within_a_tie(reference, prompt, again)
    assert again == first  # measured here: the same ids (a flip would need a near-tie at the first token)


def test_a_shared_prefix_is_reused_by_another_prompt(cached: LlamaCppModel, reference: Any) -> None:
    _greedy(cached, "a cat hotel")
    prompt, generated, reused = _greedy(cached, "a bicycle repair van")
    assert len(prompt) - 20 < reused < len(prompt)
    assert_greedy_within_a_tie(reference, prompt, generated)


def test_held_cells_stay_within_the_budget_the_least_recently_used_going_first() -> None:
    cache = PrefixCache(budget=10)
    slots = [cache.place([9, n], free=[0, 1, 2], running={}).slot for n in range(3)]
    assert cache.hold(slots[0], [1] * 4) == [] and cache.hold(slots[1], [2] * 4) == []
    assert cache.hold(slots[2], [3] * 4) == [slots[0]]  # 12 > 10: the oldest goes
    assert cache.holders() == {slots[1]: [2] * 4, slots[2]: [3] * 4}
    assert cache.hold(slots[1], [4] * 20) == [slots[2]]  # alone over the budget, the newest stays
    assert cache.holders() == {slots[1]: [4] * 20}
    unlimited = PrefixCache()
    for slot in range(3):
        assert unlimited.hold(slot, [slot] * 100) == []


def test_an_unrelated_prompt_in_between_does_not_evict_a_cached_prompt(cached: LlamaCppModel) -> None:
    """Two users taking turns: the other's prompt, sharing only BOS, goes to another slot (it used to take the
    slot that held the first prompt, and the first user's next turn recomputed everything)."""
    assert cached.engine is not None
    prompt, _, _ = _greedy(cached, "a board game bar")
    other = cached.llama.tokenize(b"Translate into French: good morning", add_bos=True, special=True)
    assert len(list(cached.engine.generate(GenerationRequest(other, 8, SamplingSpec(0.0, 1.0))))) == 8
    _, _, reused = _greedy(cached, "a board game bar")
    assert reused == len(prompt) - 1


def test_the_prefix_cache_can_be_turned_off() -> None:
    manager = _manager(model_prefix_cache=False)
    try:
        model, _ = manager.get(heavy=True)
        assert isinstance(model, LlamaCppModel)
        _complete(model, "a dog bakery")
        assert _complete(model, "a dog bakery")["usage"]["prompt_tokens_details"]["cached_tokens"] == 0
    finally:
        manager.close()


def test_a_running_sequence_shares_its_prefix_with_a_new_one(cached: LlamaCppModel, reference: Any) -> None:
    """A prompt admitted while another with the same instructions runs shares its cells, not a recompute.

    The greedy tokens after the share (seq_cp) are the ones computed from scratch, up to near-ties.
    """
    assert cached.engine is not None
    engine = cached.engine
    engine.cache.forget()  # nothing held: only the running sequence can donate
    if engine.host is not None:
        engine.host.store.clear()
    for slot in range(engine.slots):
        engine.cells.clear(slot)
    started = threading.Event()
    results: dict[str, Any] = {}

    def long_one() -> None:
        stream = cached.create_completion(f"{INSTRUCTIONS}\nIdea: a tea shop\nVerdict:", max_tokens=64, stream=True,
                                          temperature=0)
        for chunk in stream:  # type: ignore[union-attr]
            started.set()
            results.setdefault("first", chunk)

    runner = threading.Thread(target=long_one)
    runner.start()
    started.wait()
    prompt, generated, reused = _greedy(cached, "a night market")
    runner.join()
    assert len(prompt) - 20 < reused < len(prompt)
    assert_greedy_within_a_tie(reference, prompt, generated)


def test_placement_shares_the_longest_prefix_and_keeps_what_a_slot_holds_beyond_it() -> None:
    cache = PrefixCache()
    assert common_prefix([1, 2, 3, 4], [1, 2, 3, 9], limit=10) == 3
    assert common_prefix([1, 2, 3], [1, 2, 3], limit=2) == 2  # the last prompt token is always computed
    first = cache.place([1, 2, 3, 4], free=[0, 1, 2], running={})
    assert (first.keep, first.donor) == (0, None)
    cache.hold(first.slot, [1, 2, 3, 4, 5])
    again = cache.place([1, 2, 3, 7], free=[0, 1, 2], running={})
    assert again.slot != first.slot and (again.keep, again.donor) == (3, first.slot)  # [4, 5] stay held
    assert cache.holders() == {first.slot: [1, 2, 3, 4, 5]}
    cache.hold(again.slot, [1, 2, 3, 7, 8])
    turn = cache.place([1, 2, 3, 7, 8, 9, 10], free=[0, 1, 2], running={})
    assert (turn.slot, turn.keep, turn.donor) == (again.slot, 5, None)  # goes on from all it holds: its own cells
    cache.hold(turn.slot, [1, 2, 3, 7, 8, 9, 10, 11])
    other = cache.place([1, 6], free=[0, 1, 2], running={})  # only BOS in common: the empty slot, nothing evicted
    assert other.slot not in (first.slot, again.slot) and other.keep == 1
    cache.hold(other.slot, [1, 6, 6])
    full = cache.place([5, 5], free=[0, 1, 2], running={})  # no empty slot: the least recently used one
    assert full.slot == first.slot and full.keep == 0
    shared = cache.place([1, 2, 3, 4, 8], free=[2], running={0: [1, 2, 3, 4, 5]})
    assert (shared.slot, shared.keep, shared.donor) == (2, 4, 0)  # another sequence's cells
    off = PrefixCache(enabled=False)
    off.hold(0, [1, 2, 3])
    assert off.place([1, 2, 3, 4], free=[0], running={1: [1, 2, 3]}).keep == 0


def test_a_sequence_cancelled_during_a_decode_holds_what_its_cells_hold(cached: LlamaCppModel,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """A reader that stops while its last tokens are being decoded: they are in the cells all the same, and
    the tokens the cache says the slot holds must be exactly those (a later prompt reuses them; with one KV
    stream per sequence a filler token goes right after them). It once left the last decoded token out."""
    import llama_cpp

    engine = cached.engine
    assert engine is not None
    prompt = cached.llama.tokenize(f"{INSTRUCTIONS}\nIdea: a tea room\nVerdict:".encode(), add_bos=True,
                                   special=True)
    channel = engine.generate(GenerationRequest(prompt, 50, SamplingSpec(0.0, 1.0)))
    decode, steps = llama_cpp.llama_decode, []

    def cancelling(ctx: Any, batch: Any) -> int:
        steps.append(batch.n_tokens)
        if len(steps) == 3:  # the prompt, the first token, and the reader stops while the second is decoded
            channel.close()
        return int(decode(ctx, batch))

    monkeypatch.setattr(llama_cpp, "llama_decode", cancelling)
    assert len(list(channel)) == 2
    with engine._wake:  # the idle worker moves held cells to host memory only while it holds this lock
        held = [(slot, tokens) for slot, tokens in engine.cache.holders().items() if tokens[:len(prompt)] == prompt]
        if not held:  # already moved (one buffer): written back into a free slot, to count its cells
            assert engine.host is not None
            [(tokens, blob)] = [entry for entry in engine.host.store.entries() if entry[0][:len(prompt)] == prompt]
            held = [(engine.slots - 1, tokens)]
            assert llama_cpp.llama_state_seq_set_data(engine._ctx, blob, len(blob), held[0][0])
        [(slot, tokens)] = held
        assert len(tokens) == len(prompt) + 2  # the prompt, the two tokens read, the second decoded
        assert engine.cells.last(slot) + 1 == len(tokens)
        if slot not in engine.cache.holders():
            engine.cells.clear(slot)


def test_in_one_buffer_held_cells_go_to_host_memory_when_idle_and_come_back_for_their_prefix(
        cached: LlamaCppModel, reference: Any) -> None:
    """Cells held in one KV buffer widen every decode's attention: once the engine idles they are saved to host
    memory and freed, and a prompt with their prefix gets them written back, the same cells: the greedy answer
    after the write-back is the one computed from scratch, up to near-ties."""

    engine = cached.engine
    assert engine is not None
    if not engine.unified:
        pytest.skip("one stream per sequence: held cells stay in their own stream")
    assert engine.host is not None
    prompt, _, _ = _greedy(cached, "a seed library")
    with engine._wake:
        for _ in range(600):  # moved one slot each OFFLOAD_AFTER (0.1) seconds idle; a bound, not a timing
            if not engine.cache.holders():
                break
            engine._wake.wait(1.0)
    assert all(engine.cells.last(slot) == -1 for slot in range(engine.slots))
    assert any(tokens[:len(prompt)] == prompt for tokens, _ in engine.host.store.entries())
    _, generated, reused = _greedy(cached, "a seed library")
    assert reused == len(prompt) - 1
    assert_greedy_within_a_tie(reference, prompt, generated)


def test_the_host_store_keeps_the_longest_prefixes_within_its_budget() -> None:
    store = HostStore(budget=10)
    store.add([1, 2, 3], "turn 1")
    store.add([1, 2, 3, 4, 5], "turn 2")  # the next turn of that conversation replaces its first
    assert store.entries() == [([1, 2, 3, 4, 5], "turn 2")]
    store.add([7, 7, 7], "other")
    assert store.best([1, 2, 3, 4, 9], limit=4) == (4, "turn 2", 4)  # and it becomes the most recently used
    assert store.best([1, 2, 3, 4, 9], limit=2) == (2, "turn 2", 2)  # never more than the limit
    assert store.best([5], limit=1) == (0, None, 0)
    store.add([8, 8, 8], "third")  # 11 > 10: the least recently used goes
    assert [blob for _, blob in store.entries()] == ["turn 2", "third"]
    store.add(list(range(20, 40)), "big")  # alone over the budget, the newest stays
    assert [blob for _, blob in store.entries()] == ["big"] and store.tokens == 20
