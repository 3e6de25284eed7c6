"""Continuing a final assistant message (`continue_final_message`) and `avoid_first`, on the real Gemma GGUF."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from agentic.errors import InvalidRequestError
from agentic.ml.model_manager import ModelManager
from conftest import make_settings

SCHEMA = {"type": "object", "additionalProperties": False, "required": ["name", "colors", "score"],
          "properties": {"name": {"type": "string"}, "colors": {"type": "array", "items": {"type": "string"}},
                         "score": {"type": "integer", "minimum": 1, "maximum": 10}}}
FORMAT = {"type": "json_schema", "json_schema": {"name": "bird", "schema": SCHEMA}}
ASK = [{"role": "user", "content": "Describe a parrot as JSON with a name, its colors and a score."}]


@pytest.fixture(scope="module")
def manager() -> Iterator[ModelManager]:
    with ModelManager(make_settings(model_n_threads=2)) as manager:  # MODEL_PARALLEL=8: the batching engine
        yield manager


def content(answer: Any) -> str:
    return str(answer["choices"][0]["message"]["content"])


def test_a_continued_answer_is_the_rest_of_the_same_greedy_answer(manager: ModelManager) -> None:
    """Cut before a key, the schema's grammar and jump-forward pick up after the kept part: greedy decoding
    writes exactly what the whole answer had there; usage counts the kept part as prompt."""
    model, _ = manager.get(heavy=True)
    whole = model.create_chat_completion(messages=ASK, max_tokens=120, temperature=0, response_format=FORMAT)
    text = content(whole)
    kept = text[:text.index('"colors"')]
    rest = model.create_chat_completion(messages=[*ASK, {"role": "assistant", "content": kept}], max_tokens=120,
                                        temperature=0, response_format=FORMAT, continue_final_message=True)
    assert kept + content(rest) == text
    assert rest["usage"]["prompt_tokens"] > whole["usage"]["prompt_tokens"]
    assert rest["usage"]["completion_tokens"] < whole["usage"]["completion_tokens"]


def test_avoid_first_makes_the_continuation_start_with_another_token(manager: ModelManager) -> None:
    model, _ = manager.get(heavy=True)
    text = content(model.create_chat_completion(messages=ASK, max_tokens=120, temperature=0, response_format=FORMAT))
    start = text.index('"name"') + len('"name"')
    kept = text[:text.index('"', start + 1) + 1]  # up to the name value's opening quote
    name = json.loads(text)["name"]
    again = content(model.create_chat_completion(
        messages=[*ASK, {"role": "assistant", "content": kept}], max_tokens=120, temperature=0,
        response_format=FORMAT, continue_final_message=True, avoid_first=[name]))
    assert json.loads(kept + again)["name"] != name  # still the schema's JSON, with another name
    same = content(model.create_chat_completion(
        messages=[*ASK, {"role": "assistant", "content": kept}], max_tokens=120, temperature=0,
        response_format=FORMAT, continue_final_message=True))
    assert json.loads(kept + same)["name"] == name  # without it, the greedy name again


def test_an_avoided_token_is_still_written_when_the_grammar_allows_nothing_else(manager: ModelManager) -> None:
    model, _ = manager.get(heavy=True)
    only = {"type": "json_schema", "json_schema": {"name": "one", "schema": {
        "type": "object", "additionalProperties": False, "required": ["answer"],
        "properties": {"answer": {"type": "string", "enum": ["yes"]}}}}}
    reply = model.create_chat_completion(
        messages=[{"role": "user", "content": "Say yes."}, {"role": "assistant", "content": '{"answer":"'}],
        max_tokens=16, temperature=0, response_format=only, continue_final_message=True, avoid_first=["yes"])
    assert json.loads('{"answer":"' + content(reply)) == {"answer": "yes"}


def test_free_text_is_continued_without_repeating_the_kept_part(manager: ModelManager) -> None:
    model, _ = manager.get(heavy=True)
    ask = [{"role": "user", "content": "What is the capital of France?"}]
    whole = content(model.create_chat_completion(messages=ask, max_tokens=24, temperature=0))
    words = whole.split(" ")
    kept = " ".join(words[:2])
    rest = content(model.create_chat_completion(messages=[*ask, {"role": "assistant", "content": kept}],
                                                max_tokens=24, temperature=0, continue_final_message=True))
    assert rest and not rest.startswith(kept)


@pytest.mark.parametrize(("messages", "options", "says"), [
    (ASK, {"continue_final_message": True}, "needs the last message to be the assistant's answer so far"),
    ([*ASK, {"role": "assistant", "content": "hello"}], {"continue_final_message": True, "response_format": FORMAT},
     "is not the start of an answer that response_format allows"),
    (ASK, {"continue_final_message": "yes"}, "continue_final_message='yes' is not valid"),
    (ASK, {"avoid_first": "x"}, "avoid_first='x' is not valid"),
])
def test_bad_continue_requests_are_refused_naming_the_argument(manager: ModelManager, messages: Any,
                                                               options: dict[str, Any], says: str) -> None:
    model, _ = manager.get(heavy=True)
    with pytest.raises(InvalidRequestError, match=says) as refused:
        model.create_chat_completion(messages=messages, max_tokens=8, **options)
    assert refused.value.param == next(iter(name for name in options if name != "response_format"))


def test_without_the_batching_engine_continuing_is_refused_with_the_setting_to_change() -> None:
    with ModelManager(make_settings(model_n_threads=2, model_parallel=1)) as serial:
        model, _ = serial.get(heavy=True)
        with pytest.raises(InvalidRequestError, match="MODEL_PARALLEL > 1") as refused:
            model.create_chat_completion(messages=[*ASK, {"role": "assistant", "content": "{"}], max_tokens=8,
                                         continue_final_message=True)
    assert refused.value.param == "continue_final_message"
