"""The engine's grammar masks the likeliest tokens first, the whole vocabulary last, and greedy answers are the
whole-vocabulary mask's answers (issue 11: 131 whole masks of 262k tokens per `make run` before, 4.8 s)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from agentic.ideas.analyzer import ANALYSIS_SYSTEM, TRIAGE_SYSTEM, _example_turns, idea_prompt
from agentic.ideas.schemas import Analysis, Triage, response_format
from agentic.ml.engines.grammar_sampler import Grammar
from agentic.ml.model_manager import LlamaCppModel
from conftest import batched_llama

IDEAS = [("Dog bakery", "Fresh treats for dogs, delivered weekly."),
         ("Tool library", "Members borrow drills and ladders instead of buying them."),
         ("Repair cafe", "Volunteers fix broken toasters and lamps on Saturdays.")]


@pytest.fixture(scope="module")
def model() -> Iterator[LlamaCppModel]:
    # No prefix cache: the second pass would find the first one's prompts cached, and a cache hit computes the rest
    # of the prompt in other batch shapes, which on AVX-512 kernels moves a near-tie (measured 2026-11-26); greedy
    # with a hit is equal to without only within a rounding tie (test_prefix_cache.py). This test is about the
    # grammar's steps.
    with batched_llama(model_parallel=2, model_context_size=2048, model_n_threads=2, model_prefix_cache=False) as model:
        yield model


def _answers(model: LlamaCppModel, monkeypatch: pytest.MonkeyPatch) -> tuple[list[str], list[Grammar]]:
    """Greedy structured answers as the analyzer asks for them, one at a time, and each request's grammar."""
    grammars: list[Grammar] = []
    close = Grammar.close

    def closing(grammar: Grammar) -> None:
        grammars.append(grammar)
        close(grammar)

    monkeypatch.setattr(Grammar, "close", closing)
    answers = []
    for title, description in IDEAS:
        for system, schema in ((TRIAGE_SYSTEM, Triage), (ANALYSIS_SYSTEM, Analysis)):
            messages: list[dict[str, Any]] = [{"role": "system", "content": system}, *_example_turns(schema),
                                              {"role": "user", "content": idea_prompt(title, description)}]
            result = model.create_chat_completion(messages=messages, max_tokens=400, temperature=0,
                                                  response_format=response_format(schema))
            answers.append(result["choices"][0]["message"]["content"])  # type: ignore[index]
    monkeypatch.undo()
    return answers, grammars


def test_greedy_answers_are_the_whole_vocabulary_masks_answers(model: LlamaCppModel,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    stepped, stepped_grammars = _answers(model, monkeypatch)
    monkeypatch.setattr(Grammar, "STEPS", ())  # every refused token: the whole vocabulary masked
    whole, whole_grammars = _answers(model, monkeypatch)
    assert stepped == whole
    refused = sum(grammar.refused for grammar in stepped_grammars)
    assert refused > 0 and refused == sum(grammar.refused for grammar in whole_grammars)
    assert sum(grammar.full_masks for grammar in whole_grammars) == refused
    assert sum(grammar.full_masks for grammar in stepped_grammars) < refused / 4
