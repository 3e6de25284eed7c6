"""A structured answer that falls into a loop is pushed out of it (engines/runaway.py), on the real Gemma GGUF."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from agentic.ml.engines.runaway import ALLOWED, RunawayGuard
from agentic.ml.model_manager import LlamaCppModel, ModelManager
from conftest import batched_llama, make_settings

QUOTE, ONE, ZERO, A, B, C = 1, 2, 3, 4, 5, 6


def _guard(tokens: list[int]) -> RunawayGuard:
    guard = RunawayGuard()
    for token in tokens:
        guard.feed(token, token == QUOTE)
    return guard


def test_a_run_of_one_token_is_lowered_more_the_longer_it_runs() -> None:
    assert _guard([QUOTE, ONE] + [ZERO] * ALLOWED).penalties() == {}  # a repeat of ALLOWED - 1 before the next
    lowered = [_guard([QUOTE, ONE] + [ZERO] * zeros).penalties()[ZERO] for zeros in range(ALLOWED + 1, ALLOWED + 8)]
    assert lowered == sorted(lowered) and lowered[0] == pytest.approx(0.8) and lowered[-1] > 20


def test_a_longer_loop_is_lowered_on_its_way_round_and_a_breaker_starts_afresh() -> None:
    loop = [A, B, C] * 4  # the next A would continue a repeat of 9 tokens
    assert set(_guard([QUOTE, *loop]).penalties()) == {A}
    assert _guard([*loop, QUOTE, A, B, C]).penalties() == {}  # the quote breaks the run: repeats of 3 only
    assert _guard([QUOTE, A, B, C, A, B, QUOTE, C]).penalties() == {}  # short repeats stay untouched


def test_a_breaker_is_never_lowered() -> None:
    guard = RunawayGuard()
    for token in [A] + [QUOTE] * 20:
        guard.feed(token, token == QUOTE)
    assert guard.penalties() == {}


@pytest.fixture(scope="module", params=[2, 1], ids=["batching engine", "llama-cpp-python's sampler"])
def model(request: pytest.FixtureRequest) -> Iterator[LlamaCppModel]:
    if request.param > 1:
        with batched_llama(model_parallel=2, model_context_size=1024, model_n_threads=2) as model:
            yield model
        return
    with ModelManager(make_settings(model_parallel=1, model_context_size=1024, model_n_threads=2)) as manager:
        serial, _ = manager.get(heavy=True)
        assert isinstance(serial, LlamaCppModel) and serial.engine is None
        yield serial


def test_a_greedy_answer_that_loops_inside_a_value_closes_by_itself(model: LlamaCppModel,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """Greedy Gemma 270M writes this number's zeros until max_tokens without the guard (invalid JSON, finish_reason
    length); with it the string closes and the answer is valid JSON that stops by itself, on both paths."""
    lowered: list[int] = []
    apply = RunawayGuard.apply

    def counted(guard: RunawayGuard, logits: Any) -> int:
        lowered.append(apply(guard, logits))
        return lowered[-1]
    monkeypatch.setattr(RunawayGuard, "apply", counted)
    schema = {"type": "object", "properties": {"number": {"type": "string"}}, "required": ["number"]}
    result = model.create_chat_completion(
        messages=[{"role": "user", "content": "Write the number one followed by a thousand zeros, in digits."}],
        max_tokens=200, temperature=0,
        response_format={"type": "json_schema", "json_schema": {"name": "n", "schema": schema}})
    assert isinstance(result, dict)
    choice = result["choices"][0]
    assert choice["finish_reason"] == "stop", choice["message"]["content"]
    assert set(json.loads(choice["message"]["content"])) == {"number"}
    assert any(lowered)  # the guard did lower a repeating token
